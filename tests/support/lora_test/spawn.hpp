#pragma once
// Starting ranks of a data-parallel test as child processes of the test binary (this binary again,
// in a worker mode the test's main() understands), with torchrun's environment.

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace lora_test {

/// A TCP port on 127.0.0.1 that was free a moment ago.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// The variables torchrun gives rank `rank` of `world` on one machine, the store on 127.0.0.1:port.
inline std::map<std::string, std::string> torchrun_env(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)},       {"WORLD_SIZE", std::to_string(world)},  {"LOCAL_RANK", std::to_string(rank)},
          {"LOCAL_WORLD_SIZE", std::to_string(world)}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)}};
}

/// A child process: its pid, the file it writes its result to, and its stderr.
struct Rank {
  pid_t pid = -1;
  std::string out, err;
};

/// Runs this binary with `args`, the current environment overridden by `env`, stderr into `err`.
inline Rank spawn_self(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
                       const std::string& out, const std::string& err) {
  Rank r;
  r.out = out;
  r.err = err;
  std::vector<std::string> vars;
  for (char** e = environ; *e; ++e) {
    const std::string v = *e;
    if (!env.count(v.substr(0, v.find('=')))) vars.push_back(v);
  }
  for (const auto& kv : env) vars.push_back(kv.first + "=" + kv.second);
  std::vector<char*> envp;
  for (auto& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::string> storage{self};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, r.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (posix_spawn(&r.pid, self.c_str(), &actions, nullptr, argv.data(), envp.data()) != 0) r.pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return r;
}

/// The exit status of `r` (-1: still running after `limit`, then killed).
inline int wait_rank(const Rank& r, std::chrono::seconds limit) {
  if (r.pid < 0) return -2;
  const auto end = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (::waitpid(r.pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > end) {
      ::kill(r.pid, SIGKILL);
      ::waitpid(r.pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace lora_test
