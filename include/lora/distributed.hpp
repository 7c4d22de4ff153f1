#pragma once
/// \file distributed.hpp
/// Data-parallel training on PyTorch's c10d: a process group from the launcher's environment
/// (torchrun, Slurm or plain variables), the trainable parameters broadcast from rank 0, and
/// their gradients all-reduced in flattened buckets. Gloo for CPU tensors, NCCL for CUDA where
/// LibTorch has it.
///
/// Opt-in: `lora.hpp` does not include this header. It needs c10d's headers, which include Gloo's
/// (Debian: libgloo-dev; pip's LibTorch ships them), and a LibTorch built with Gloo (Debian's and
/// pip's are); it defines `USE_C10D_GLOO` for c10d's Gloo header itself. CMake: link
/// `lora::distributed` (present when Gloo's headers were found). NCCL: define `USE_C10D_NCCL`
/// where LibTorch has it (2.x with CUDA).
///
/// Only adapter gradients cross the network in LoRA training: GPT-2 medium with r = 4 on q and v
/// moves 393,216 floats (1.5 MB) per step, against 355M (1.4 GB) for full fine-tuning.
///
/// Example (run with `torchrun --nproc-per-node 2 --no-python ./train`):
/// \code
///   auto group = lora::dist::ProcessGroup::from_env();      // world size 1 without a launcher
///   auto params = lora::lora_parameters(*model);
///   group.broadcast(params);                                // every rank starts from rank 0's adapter
///   for (...) {
///     // each rank: its share of the global batch, loss summed over its tokens
///     (local_sum / global_count).backward();
///     group.all_reduce_gradients(params);                   // summed over ranks
///     optimizer.step();
///   }
/// \endcode

#include <torch/torch.h>
#include <torch/version.h>

#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO  // c10d's ProcessGroupGloo.hpp is empty without it
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace lora {
namespace dist {

/// Where this process is in the job, as the launcher told it.
struct LaunchEnv {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// torchrun's agent already hosts the TCPStore (TORCHELASTIC_USE_AGENT_STORE=True): every rank
  /// connects as a client, under the prefix /worker/attempt_<restart_count>.
  bool agent_store = false;
  int restart_count = 0;
  std::string source = "single process";  ///< "torchrun / environment", "Slurm", or "single process"
};

namespace detail {

inline int env_int(const std::function<const char*(const char*)>& get, const char* name, int lo, int hi) {
  const char* v = get(name);
  const std::string s = v ? v : "";
  size_t used = 0;
  long n = 0;
  try {
    n = std::stol(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (s.empty() || used != s.size() || n < lo || n > hi)
    throw std::invalid_argument("lora::dist: environment variable " + std::string(name) + "='" + s +
                                "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(n);
}

inline bool env_set(const std::function<const char*(const char*)>& get, const char* name) {
  const char* v = get(name);
  return v && *v;
}

}  // namespace detail

/// Reads the launcher's variables through `get` (std::getenv by default):
/// - torchrun / plain: WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
///   TORCHELASTIC_USE_AGENT_STORE, TORCHELASTIC_RESTART_COUNT. WORLD_SIZE without RANK (or the
///   reverse), a rank outside [0, WORLD_SIZE), a port outside [1, 65535] are errors naming the variable.
/// - Slurm (srun), when WORLD_SIZE is not set: SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; MASTER_ADDR
///   and MASTER_PORT must then be set by the job script.
/// - Neither: a single process (rank 0 of 1).
inline LaunchEnv launch_env(const std::function<const char*(const char*)>& get = [](const char* n) { return std::getenv(n); }) {
  LaunchEnv e;
  const bool torchrun = detail::env_set(get, "WORLD_SIZE") || detail::env_set(get, "RANK");
  const bool slurm = !torchrun && detail::env_set(get, "SLURM_NTASKS") && detail::env_set(get, "SLURM_PROCID");
  if (!torchrun && !slurm) return e;
  const char* size_var = torchrun ? "WORLD_SIZE" : "SLURM_NTASKS";
  const char* rank_var = torchrun ? "RANK" : "SLURM_PROCID";
  if (!detail::env_set(get, size_var) || !detail::env_set(get, rank_var))
    throw std::invalid_argument(std::string("lora::dist: ") + (detail::env_set(get, size_var) ? size_var : rank_var) +
                                " is set but " + (detail::env_set(get, size_var) ? rank_var : size_var) +
                                " is not: launch with torchrun, or set WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT together");
  e.source = torchrun ? "torchrun / environment" : "Slurm";
  e.world_size = detail::env_int(get, size_var, 1, 1 << 20);
  e.rank = detail::env_int(get, rank_var, 0, e.world_size - 1);
  const char* local_var = torchrun ? "LOCAL_RANK" : "SLURM_LOCALID";
  e.local_rank = detail::env_set(get, local_var) ? detail::env_int(get, local_var, 0, 1 << 20) : e.rank;
  if (torchrun && detail::env_set(get, "LOCAL_WORLD_SIZE"))
    e.local_world_size = detail::env_int(get, "LOCAL_WORLD_SIZE", 1, 1 << 20);
  else
    e.local_world_size = e.world_size;
  if (e.world_size > 1 && (!detail::env_set(get, "MASTER_ADDR") || !detail::env_set(get, "MASTER_PORT")))
    throw std::invalid_argument("lora::dist: WORLD_SIZE is " + std::to_string(e.world_size) +
                                " but MASTER_ADDR or MASTER_PORT is not set: every rank needs the address and port of rank 0's store");
  if (detail::env_set(get, "MASTER_ADDR")) e.master_addr = get("MASTER_ADDR");
  if (detail::env_set(get, "MASTER_PORT")) e.master_port = detail::env_int(get, "MASTER_PORT", 1, 65535);
  const char* agent = get("TORCHELASTIC_USE_AGENT_STORE");
  e.agent_store = agent && (std::string(agent) == "True" || std::string(agent) == "true" || std::string(agent) == "1");
  if (detail::env_set(get, "TORCHELASTIC_RESTART_COUNT"))
    e.restart_count = detail::env_int(get, "TORCHELASTIC_RESTART_COUNT", 0, 1 << 20);
  return e;
}

/// Options of a ProcessGroup.
struct ProcessGroupOptions {
  /// How long a collective (or connecting to the store) may wait for the other ranks before this
  /// rank gives up with an error: a rank that died or stalls ends the job instead of hanging it.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(5);
  /// Gradients are all-reduced in flattened buckets of at most this many bytes (DDP's default).
  TORCH_ARG(int64_t, bucket_bytes) = 25 * 1024 * 1024;
  /// "gloo" (CPU tensors) or "nccl" (CUDA tensors; needs USE_C10D_NCCL).
  TORCH_ARG(std::string, backend) = "gloo";
};

/// A c10d process group (Gloo or NCCL) over a TCPStore, or a world of one process with no group
/// at all (every collective is then a no-op). Copies share the group.
class ProcessGroup {
 public:
  /// The group the launcher's environment describes (launch_env()); rank 0 hosts the store unless
  /// torchrun's agent does. Connecting waits at most `options.timeout()`.
  static ProcessGroup from_env(const ProcessGroupOptions& options = {}) { return ProcessGroup(launch_env(), options); }

  /// Without arguments: a world of one process.
  explicit ProcessGroup(const LaunchEnv& env = {}, const ProcessGroupOptions& options = {}) : env_(env), options_(options) {
    if (env.world_size == 1 && !env.agent_store) return;
    const std::string where = "lora::dist: rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size);
    c10::intrusive_ptr<c10d::Store> store;
    try {
      c10d::TCPStoreOptions so;
      so.port = static_cast<std::uint16_t>(env.master_port);
      so.isServer = env.rank == 0 && !env.agent_store;
      so.numWorkers = static_cast<std::size_t>(env.world_size);
      so.waitWorkers = false;
      so.timeout = options.timeout();
      store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
      if (env.agent_store)
        store = c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(env.restart_count), store);
    } catch (const std::exception& e) {
      throw std::runtime_error(where + ": cannot " + (env.rank == 0 && !env.agent_store ? "host" : "reach") +
                               " the TCPStore at " + env.master_addr + ":" + std::to_string(env.master_port) + " within " +
                               seconds(options.timeout()) + " (is rank 0 running, MASTER_ADDR/MASTER_PORT right, the port free?): " +
                               first_line(e.what()));
    }
    try {
      if (options.backend() == "gloo") {
        auto o = c10d::ProcessGroupGloo::Options::create(options.timeout());
        o->devices.push_back(gloo_device(env));
        gloo_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, o);
      } else if (options.backend() == "nccl") {
#ifdef USE_C10D_NCCL
        auto o = c10d::ProcessGroupNCCL::Options::create();
        o->timeout = options.timeout();
        nccl_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, o);
#else
        throw std::invalid_argument("backend 'nccl' needs a LibTorch with NCCL and USE_C10D_NCCL defined; use 'gloo'");
#endif
      } else {
        throw std::invalid_argument("unknown backend '" + options.backend() + "' (gloo or nccl)");
      }
    } catch (const std::exception& e) {
      throw std::runtime_error(where + ": cannot set up the " + options.backend() + " process group within " +
                               seconds(options.timeout()) + ": " + first_line(e.what()));
    }
  }

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  const LaunchEnv& env() const { return env_; }
  const ProcessGroupOptions& options() const { return options_; }
  /// Bytes this rank handed to collectives so far (the payload, as DDP counts it).
  int64_t bytes_moved() const { return *bytes_; }
  /// Wall-clock seconds this rank spent in collectives so far (waiting for slower ranks included).
  double collective_seconds() const { return *seconds_; }

  /// Copies rank `root`'s values of `tensors` into every rank's (in place).
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0) {
    if (!active()) return;
    torch::NoGradGuard no_grad;
    for_each_bucket(tensors, [&](torch::Tensor flat, const std::vector<torch::Tensor>& members) {
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = options_.timeout();
      std::vector<torch::Tensor> io{flat};
      run("broadcast", [&] { return call([&](auto& g) { return g->broadcast(io, o); }); });
      unflatten(flat, members, 1.0);
    });
  }

  /// Sums `tensors` over the ranks in place (each its own collective; for small tensors such as
  /// token counts; gradients go through all_reduce_gradients).
  void all_reduce(const std::vector<torch::Tensor>& tensors) {
    if (!active()) return;
    torch::NoGradGuard no_grad;
    for (const auto& t : tensors) {
      c10d::AllreduceOptions o;
      o.timeout = options_.timeout();
      torch::Tensor flat = t.contiguous();
      std::vector<torch::Tensor> io{flat};
      run("all_reduce", [&] { return call([&](auto& g) { return g->allreduce(io, o); }); });
      if (!flat.is_same(t)) t.copy_(flat);
    }
  }

  /// Replaces each parameter's gradient by the sum over ranks divided by `normaliser`, in
  /// flattened buckets of at most options().bucket_bytes(). A parameter without a gradient on this
  /// rank (no examples this step) counts as zeros. In a world of one: only the division.
  void all_reduce_gradients(const std::vector<torch::Tensor>& params, double normaliser = 1.0) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> grads;
    for (auto p : params) {
      if (!p.requires_grad()) continue;
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.mutable_grad());
    }
    if (!active()) {
      if (normaliser != 1.0)
        for (auto& g : grads) g.div_(normaliser);
      return;
    }
    for_each_bucket(grads, [&](torch::Tensor flat, const std::vector<torch::Tensor>& members) {
      c10d::AllreduceOptions o;
      o.timeout = options_.timeout();
      std::vector<torch::Tensor> io{flat};
      run("all_reduce of gradients", [&] { return call([&](auto& g) { return g->allreduce(io, o); }); });
      unflatten(flat, members, normaliser);
    });
  }

  /// Waits until every rank reaches this point.
  void barrier() {
    if (!active()) return;
    c10d::BarrierOptions o;
    o.timeout = options_.timeout();
    run("barrier", [&] { return call([&](auto& g) { return g->barrier(o); }); });
  }

 private:
  bool active() const { return static_cast<bool>(gloo_)
#ifdef USE_C10D_NCCL
                               || static_cast<bool>(nccl_)
#endif
        ; }

  template <class Fn>
  c10::intrusive_ptr<c10d::Work> call(Fn&& fn) {
#ifdef USE_C10D_NCCL
    if (nccl_) return fn(nccl_);
#endif
    return fn(gloo_);
  }

  static std::string seconds(std::chrono::milliseconds t) {
    return std::to_string(std::chrono::duration<double>(t).count()).substr(0, 6) + " s";
  }
  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  /// Gloo's network device: the interface in GLOO_SOCKET_IFNAME when set; the loopback for a job
  /// on one machine (MASTER_ADDR 127.x/localhost); else the local address this host reaches
  /// MASTER_ADDR from (the kernel's route to it), so machines whose host name resolves to
  /// 127.0.0.1 (common: /etc/hosts) still offer the others an address they can reach; this
  /// host's address when no route is found.
  static std::shared_ptr<::gloo::transport::Device> gloo_device(const LaunchEnv& env) {
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
      return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
    if (env.master_addr.rfind("127.", 0) == 0 || env.master_addr == "localhost")
      return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    const std::string local = address_towards(env.master_addr, env.master_port);
    if (!local.empty()) return c10d::ProcessGroupGloo::createDeviceForHostname(local);
    return c10d::ProcessGroupGloo::createDefaultDevice();
  }

  /// The local IP address the kernel would send from to reach host:port ("" if unknown). A UDP
  /// socket's connect() only picks the route: nothing is sent.
  static std::string address_towards(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || !found) return "";
    std::string out;
    for (addrinfo* a = found; a && out.empty(); a = a->ai_next) {
      const int fd = ::socket(a->ai_family, SOCK_DGRAM, 0);
      if (fd < 0) continue;
      sockaddr_storage local{};
      socklen_t len = sizeof local;
      char text[INET6_ADDRSTRLEN] = {};
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 && ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
        const void* ip = local.ss_family == AF_INET6 ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
                                                     : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
        if (::inet_ntop(local.ss_family, ip, text, sizeof text)) out = text;
      }
      ::close(fd);
    }
    ::freeaddrinfo(found);
    return out;
  }

  /// Runs a collective and waits for it; a failure (a rank that died, or the timeout) becomes one
  /// error naming this rank, the operation and the timeout.
  template <class Start>
  void run(const char* what, Start&& start) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      start()->wait(options_.timeout());
      *seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } catch (const std::exception& e) {
      throw std::runtime_error("lora::dist: rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world_size) +
                               ": " + what + " failed or timed out (timeout " + seconds(options_.timeout()) +
                               "): another rank has died or stalled? " + first_line(e.what()));
    }
  }

  /// Groups `tensors` (same dtype and device in a bucket, at most bucket_bytes each unless one
  /// tensor is larger) and hands each flattened bucket to `fn` with its members.
  template <class Fn>
  void for_each_bucket(const std::vector<torch::Tensor>& tensors, Fn&& fn) {
    std::vector<torch::Tensor> members;
    int64_t bytes = 0;
    auto flush = [&] {
      if (members.empty()) return;
      std::vector<torch::Tensor> flat_parts;
      for (const auto& t : members) flat_parts.push_back(t.reshape({-1}));
      torch::Tensor flat = torch::cat(flat_parts);
      *bytes_ += flat.numel() * static_cast<int64_t>(flat.element_size());
      fn(flat, members);
      members.clear();
      bytes = 0;
    };
    for (const auto& t : tensors) {
      const int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
      if (!members.empty() && (bytes + b > options_.bucket_bytes() || t.scalar_type() != members.front().scalar_type() ||
                               t.device() != members.front().device()))
        flush();
      members.push_back(t);
      bytes += b;
    }
    flush();
  }

  static void unflatten(const torch::Tensor& flat, const std::vector<torch::Tensor>& members, double normaliser) {
    int64_t at = 0;
    for (auto t : members) {
      auto part = flat.narrow(0, at, t.numel()).view(t.sizes());
      if (normaliser != 1.0) t.copy_(part / normaliser);
      else t.copy_(part);
      at += t.numel();
    }
  }

  LaunchEnv env_;
  ProcessGroupOptions options_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_;
#ifdef USE_C10D_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl_;
#endif
  std::shared_ptr<int64_t> bytes_ = std::make_shared<int64_t>(0);
  std::shared_ptr<double> seconds_ = std::make_shared<double>(0);
};

}  // namespace dist
}  // namespace lora
