#pragma once
/// \file atomic_file.hpp
/// Writing a file so that a crash or an exception never leaves half of it: every file this
/// library writes (safetensors, adapter_config.json, the native archive) goes through here.
/// No torch: the safetensors parser and its fuzz target use it too.
///
/// Example:
/// \code
///   lora::atomic_write("out/config.json", [&](std::FILE* f) { lora::write_bytes(f, text.data(), text.size(), "out/config.json"); });
/// \endcode

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

namespace lora {

/// Writes `path` through a temporary file in the same folder, fsync and rename: the
/// target is either the old file or the complete new one, never a partial file.
inline void atomic_write(const std::string& path, const std::function<void(std::FILE*)>& body) {
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = ::mkstemp(&tmp[0]);
  if (fd < 0) throw std::runtime_error("cannot create a temporary file beside '" + path + "': " + std::strerror(errno));
  ::fchmod(fd, 0644);
  std::FILE* f = ::fdopen(fd, "wb");
  if (!f) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write '" + tmp + "': " + std::strerror(errno));
  }
  try {
    body(f);
    if (std::fflush(f) != 0 || ::fsync(::fileno(f)) != 0)
      throw std::runtime_error("cannot write '" + path + "': " + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    ::unlink(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write '" + path + "': " + why);
  }
  // Make the rename itself durable.
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

inline void write_bytes(std::FILE* f, const void* data, size_t n, const std::string& path) {
  if (n && std::fwrite(data, 1, n, f) != n)
    throw std::runtime_error("cannot write '" + path + "': " + std::strerror(errno));
}

/// Writes `text` to `path` atomically.
inline void write_text_file(const std::string& path, const std::string& text) {
  atomic_write(path, [&](std::FILE* f) { write_bytes(f, text.data(), text.size(), path); });
}

}  // namespace lora
