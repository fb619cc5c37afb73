// edgec-run: run an edgec artifact on a device with only the TVM runtime (no Python).
//
//   edgec-run ./model.so -i x.npy [-i ...] [-o y.npy ...] [--runs N] [--warmup W]
//             [--threads T] [--report latency.json] [--profile REPS]
//   edgec-run --serve PORT [--host ADDR] [--key KEY] [--session-timeout S]
//                                                      TVM RPC server (no tracker)
//   edgec-run --rpc-fd FD [--workdir DIR]              serve one handshaken RPC session
//
// Inputs are .npy files in the model's input order; outputs are written in output order
// (missing names: output<i>.npy). The report has the keys of `edgec bench --json`.
// Built by edgec with the target's g++ against the tvm_ffi headers and the target's
// libtvm_ffi.so / libtvm_runtime.so (found beside it: rpath $ORIGIN).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <map>
#include <thread>
#include <vector>

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

namespace ffi = tvm::ffi;

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
  }
  void FreeData(DLTensor* t) { free(t->data); }
};

static void Fail(const std::string& msg) {
  std::cerr << "edgec-run: " << msg << std::endl;
  std::exit(2);
}

// ---- .npy -------------------------------------------------------------------------------------

struct DType {
  const char* descr;
  DLDataType dl;
};
static const DType kDTypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"<f8", {kDLFloat, 64, 1}}, {"<f2", {kDLFloat, 16, 1}},
    {"|i1", {kDLInt, 8, 1}},    {"|u1", {kDLUInt, 8, 1}},   {"<i2", {kDLInt, 16, 1}},
    {"<i4", {kDLInt, 32, 1}},   {"<i8", {kDLInt, 64, 1}},   {"|b1", {kDLBool, 8, 1}},
};

static ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail("cannot open " + path);
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) Fail(path + ": not a .npy file");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h;
    f.read(reinterpret_cast<char*>(&h), 2);
    hlen = h;
  } else {
    f.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, ' ');
  f.read(&header[0], hlen);
  if (header.find("'fortran_order': True") != std::string::npos) Fail(path + ": Fortran order");
  size_t d = header.find("'descr':");
  size_t q1 = header.find('\'', d + 8), q2 = header.find('\'', q1 + 1);
  std::string descr = header.substr(q1 + 1, q2 - q1 - 1);
  if (descr == "<b1" || descr == "=b1") descr = "|b1";
  if (descr == "<i1") descr = "|i1";
  if (descr == "<u1") descr = "|u1";
  const DType* dt = nullptr;
  for (const auto& c : kDTypes) dt = descr == c.descr ? &c : dt;
  if (!dt) Fail(path + ": unsupported dtype " + descr);
  size_t p1 = header.find('(', header.find("'shape':")), p2 = header.find(')', p1);
  std::vector<int64_t> shape;
  std::stringstream ss(header.substr(p1 + 1, p2 - p1 - 1));
  for (std::string tok; std::getline(ss, tok, ',');) {
    if (tok.find_first_of("0123456789") != std::string::npos) shape.push_back(std::stoll(tok));
  }
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(shape), dt->dl, DLDevice{kDLCPU, 0});
  f.read(static_cast<char*>(t.data_ptr()), ffi::GetDataSize(t));
  if (!f) Fail(path + ": truncated data");
  return t;
}

static void WriteNpy(const std::string& path, const ffi::Tensor& t) {
  const DType* dt = nullptr;
  for (const auto& c : kDTypes) {
    if (c.dl.code == t.dtype().code && c.dl.bits == t.dtype().bits) dt = &c;
  }
  if (!dt) Fail("unsupported output dtype");
  std::string shape = "(";
  for (int i = 0; i < t.ndim(); ++i) {
    shape += std::to_string(t.shape()[i]) + (t.ndim() == 1 ? "," : i + 1 < t.ndim() ? ", " : "");
  }
  shape += ")";
  std::string header = std::string("{'descr': '") + dt->descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) Fail("cannot write " + path);
  uint16_t hlen = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<char*>(&hlen), 2);
  f << header;
  f.write(static_cast<const char*>(t.data_ptr()) + t.byte_offset(), ffi::GetDataSize(t));
}

static void Flatten(const ffi::Any& v, std::vector<ffi::Tensor>* out) {
  if (auto t = v.try_cast<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto a = v.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *a) Flatten(item, out);
  } else {
    Fail("unexpected model output type " + v.GetTypeKey());
  }
}

// ---- device description -------------------------------------------------------------------------

static std::string ReadFirstLine(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\0' || line.back() == ' ')) line.pop_back();
  return line;
}

static std::string JsonStr(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) o += c;
  }
  return o + "\"";
}

static std::string g_emulated;  // --emulated NAME: this "device" is an emulator (no latency)

// ARM "CPU part" numbers (aarch64 /proc/cpuinfo has no model name)
static std::string ArmPartName(const std::string& part) {
  static const char* kParts[][2] = {
      {"0xd03", "Cortex-A53"}, {"0xd04", "Cortex-A35"}, {"0xd05", "Cortex-A55"},
      {"0xd07", "Cortex-A57"}, {"0xd08", "Cortex-A72"}, {"0xd09", "Cortex-A73"},
      {"0xd0a", "Cortex-A75"}, {"0xd0b", "Cortex-A76"}, {"0xd0c", "Neoverse-N1"},
      {"0xd0d", "Cortex-A77"}, {"0xd41", "Cortex-A78"}, {"0xd44", "Cortex-X1"},
      {"0xd46", "Cortex-A510"}, {"0xd47", "Cortex-A710"}, {"0xd48", "Cortex-X2"},
      {"0xd4d", "Cortex-A715"}, {"0xd4e", "Cortex-X3"}, {"0xd40", "Neoverse-V1"},
      {"0xd4f", "Neoverse-V2"}, {"0xd49", "Neoverse-N2"}};
  for (const auto& p : kParts) {
    if (part == p[0]) return p[1];
  }
  return "ARM CPU part " + part;
}

static std::string DeviceJson() {
  std::ifstream f("/proc/cpuinfo");
  std::string cpu, hardware;
  std::vector<std::pair<std::string, int>> parts;  // in order of appearance, with counts
  for (std::string line; std::getline(f, line);) {
    size_t c = line.find(':');
    if (c == std::string::npos) continue;
    std::string k = line.substr(0, line.find_last_not_of(" \t", c - 1) + 1);
    std::string v = line.substr(line.find_first_not_of(" \t", c + 1) == std::string::npos ? line.size() : line.find_first_not_of(" \t", c + 1));
    if (k == "model name" && cpu.empty()) cpu = v;
    if (k == "Hardware" && hardware.empty()) hardware = v;
    if (k == "CPU part") {
      auto it = std::find_if(parts.begin(), parts.end(), [&](const auto& p) { return p.first == v; });
      if (it == parts.end()) parts.emplace_back(v, 1);
      else ++it->second;
    }
  }
  std::string arm;  // e.g. "4x Cortex-A55 + 4x Cortex-A76"
  for (const auto& p : parts) {
    arm += (arm.empty() ? "" : " + ") + std::to_string(p.second) + "x " + ArmPartName(p.first);
  }
  std::string board = ReadFirstLine("/proc/device-tree/model");
  if (cpu.empty()) cpu = !arm.empty() ? arm : !hardware.empty() ? hardware : "unknown";
  std::string gov = ReadFirstLine("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor");
  std::string fmax = ReadFirstLine("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq");
  std::ostringstream o;
  o << "{\"cpu\": " << JsonStr(cpu) << ", \"board\": " << (board.empty() ? "null" : JsonStr(board))
    << ", \"cores\": " << sysconf(_SC_NPROCESSORS_ONLN)
    << ", \"governor\": " << (gov.empty() ? "null" : JsonStr(gov))
    << ", \"max_mhz\": " << (fmax.empty() ? "null" : std::to_string(std::atol(fmax.c_str()) / 1000))
    << ", \"emulated\": " << (g_emulated.empty() ? "null" : JsonStr(g_emulated))
#if defined(__aarch64__)
    << ", \"arch\": \"aarch64\"}";
#elif defined(__x86_64__)
    << ", \"arch\": \"x86_64\"}";
#else
    << ", \"arch\": \"unknown\"}";
#endif
  return o.str();
}

// ---- statistics (numpy's linear percentiles, sample stddev: as edgec.report.latency) ----------

static double Percentile(const std::vector<double>& sorted, double p) {
  double idx = p / 100.0 * (sorted.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(idx)), hi = static_cast<size_t>(std::ceil(idx));
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (idx - lo);
}

static std::string StatsJson(std::vector<double> ms, int warmup) {
  std::ostringstream samples;  // in measurement order, as edgec bench reports them
  samples.precision(9);
  for (size_t i = 0; i < ms.size(); ++i) samples << (i ? ", " : "") << ms[i];
  std::sort(ms.begin(), ms.end());
  double mean = 0, var = 0;
  for (double v : ms) mean += v;
  mean /= ms.size();
  for (double v : ms) var += (v - mean) * (v - mean);
  double sd = ms.size() > 1 ? std::sqrt(var / (ms.size() - 1)) : 0.0;
  std::ostringstream o;
  o.precision(17);
  o << "{\"p50_ms\": " << Percentile(ms, 50) << ", \"p90_ms\": " << Percentile(ms, 90)
    << ", \"p99_ms\": " << Percentile(ms, 99) << ", \"mean_ms\": " << mean << ", \"stddev_ms\": " << sd
    << ", \"min_ms\": " << ms.front() << ", \"max_ms\": " << ms.back() << ", \"runs\": " << ms.size()
    << ", \"warmup\": " << warmup << ", \"noisy\": " << (mean > 0 && sd / mean > 0.1 ? "true" : "false")
    << ", \"samples_ms\": [" << samples.str() << "]}";
  return o.str();
}

// ---- run a model --------------------------------------------------------------------------------

// Per-kernel time from the Relax VM's instrument hook (called before and after every VM call;
// CPU kernels are synchronous): JSON rows sorted by time, as `edgec compile`'s profile.
static std::string ProfileJson(ffi::Module vm, const std::function<ffi::Any()>& call, int reps) {
  std::map<std::string, std::pair<double, int>> acc;  // ms total, calls
  std::map<std::string, std::chrono::steady_clock::time_point> started;
  auto hook = ffi::Function::FromPacked([&](ffi::PackedArgs args, ffi::Any* rv) {
    std::string name = args[1].cast<ffi::String>();
    if (args[2].cast<bool>()) {
      started[name] = std::chrono::steady_clock::now();
    } else {
      auto dt = std::chrono::steady_clock::now() - started[name];
      acc[name].first += std::chrono::duration<double, std::milli>(dt).count();
      acc[name].second += 1;
    }
    *rv = 0;
  });
  ffi::Function set = vm->GetFunction("set_instrument").value();
  set(hook);
  for (int i = 0; i < reps; ++i) call();
  set(ffi::Function::FromPacked([](ffi::PackedArgs, ffi::Any* rv) { *rv = 0; }));
  std::vector<std::pair<double, std::string>> rows;
  double whole = 0;
  for (const auto& kv : acc) {
    rows.emplace_back(kv.second.first / reps, kv.first);
    whole += kv.second.first / reps;
  }
  std::sort(rows.rbegin(), rows.rend());
  std::ostringstream o;
  o.precision(12);  // shares must sum to 1 (the default 6 digits do not)
  o << "[";
  for (size_t i = 0; i < rows.size(); ++i) {
    o << (i ? ", " : "") << "{\"kernel\": " << JsonStr(rows[i].second) << ", \"ms\": " << rows[i].first
      << ", \"calls\": " << acc[rows[i].second].second / reps
      << ", \"share\": " << (whole > 0 ? rows[i].first / whole : 0.0) << "}";
  }
  return o.str() + "]";
}

static int RunModel(const std::string& model, const std::vector<std::string>& inputs,
                    const std::vector<std::string>& outputs, int runs, int warmup,
                    const std::string& report, int profile_reps) {
  std::string path = model.find('/') == std::string::npos ? "./" + model : model;
  ffi::Module lib = ffi::Module::LoadFromFile(path);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  std::vector<ffi::Any> args;
  for (const auto& p : inputs) args.push_back(ReadNpy(p));
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  auto call = [&]() {
    ffi::Any rv;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &rv);
    return rv;
  };
  ffi::Any result;
  for (int i = 0; i < warmup; ++i) result = call();
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    result = call();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  if (runs == 0 && warmup == 0) result = call();
  std::string profile = profile_reps > 0 ? ProfileJson(vm, call, profile_reps) : "null";
  std::vector<ffi::Tensor> outs;
  Flatten(result, &outs);
  for (size_t i = 0; i < outs.size(); ++i) {
    WriteNpy(i < outputs.size() ? outputs[i] : "output" + std::to_string(i) + ".npy", outs[i]);
  }
  if (!report.empty() && !ms.empty()) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int threads = ffi::Function::GetGlobal("runtime.NumThreads").value()().cast<int>();
    std::ofstream f(report);
    f << "{\"threads\": " << threads << ", \"method\": \"edgec-run: " << warmup
      << " untimed calls, then back-to-back timed calls (steady_clock)\", \"edgec\": "
      << StatsJson(ms, warmup) << ", \"device\": " << DeviceJson()
      << ", \"peak_rss_mb\": " << ru.ru_maxrss / 1024.0 << ", \"profile\": " << profile << "}\n";
  }
  std::cerr << "edgec-run: " << outs.size() << " output(s)";
  if (!ms.empty()) {
    std::vector<double> s = ms;
    std::sort(s.begin(), s.end());
    std::cerr << ", p50 " << Percentile(s, 50) << " ms over " << ms.size() << " runs";
  }
  std::cerr << std::endl;
  return 0;
}

// ---- RPC ----------------------------------------------------------------------------------------

static std::string g_workdir = ".";

static void RegisterServerEnv() {
  ffi::Function::SetGlobal("tvm.rpc.server.workpath", ffi::Function::FromTyped([](std::string name) {
    return g_workdir + "/" + name;
  }), true);
  ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped([](std::string name) {
    return ffi::Module::LoadFromFile(g_workdir + "/" + name);
  }), true);
  ffi::Function::SetGlobal("edgec.device_info", ffi::Function::FromTyped([]() { return DeviceJson(); }), true);
}

static int ServeFd(int fd) {
  RegisterServerEnv();
  ffi::Function::GetGlobal("rpc.ServerLoop").value()(fd);
  return 0;
}

static bool RecvAll(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r <= 0) return false;
    p += r;
    n -= r;
  }
  return true;
}

static int Serve(const std::string& host, int port, const std::string& key, int timeout_s) {
  const int32_t kMagic = 0xFF271, kMismatch = 0xFF271 + 2;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  if (bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(ls, 4) != 0) {
    Fail("cannot listen on " + host + ":" + std::to_string(port));
  }
  std::cerr << "edgec-run: RPC server on " << host << ":" << port << " (key '" << key << "')\n"
            << "device: " << DeviceJson() << std::endl;
  while (true) {
    int c = accept(ls, nullptr, nullptr);
    if (c < 0) continue;
    int32_t magic = 0, len = 0;
    std::string client;
    if (RecvAll(c, &magic, 4) && magic == kMagic && RecvAll(c, &len, 4) && len >= 0 && len < 4096) {
      client.resize(len);
      RecvAll(c, &client[0], len);
    } else {
      close(c);
      continue;
    }
    std::string want = "client:" + key;
    if (client.substr(0, client.find(' ')) != want) {
      send(c, &kMismatch, 4, 0);
      close(c);
      continue;
    }
    std::string server_key = "server:" + key;
    int32_t slen = static_cast<int32_t>(server_key.size());
    send(c, &kMagic, 4, 0);
    send(c, &slen, 4, 0);
    send(c, server_key.data(), slen, 0);
    pid_t pid = fork();
    if (pid == 0) {
      close(ls);
      if (timeout_s > 0) alarm(timeout_s);  // a stuck session ends; the server keeps serving
      char tmpl[] = "/tmp/edgec-rpc-XXXXXX";
      if (mkdtemp(tmpl)) g_workdir = tmpl;
      ServeFd(c);
      _exit(0);
    }
    close(c);
    int status = 0;
    waitpid(pid, &status, 0);  // one session at a time: a board measures one model at a time
  }
}

int main(int argc, char** argv) {
  std::vector<std::string> inputs, outputs;
  std::string model, report, host = "0.0.0.0", key;
  int runs = 1, warmup = 0, serve_port = -1, rpc_fd = -1, profile_reps = 0, timeout_s = 600;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Fail("missing value after " + a);
      return argv[++i];
    };
    if (a == "-i" || a == "--input") inputs.push_back(next());
    else if (a == "-o" || a == "--output") outputs.push_back(next());
    else if (a == "--runs") runs = std::atoi(next().c_str());
    else if (a == "--warmup") warmup = std::atoi(next().c_str());
    else if (a == "--threads") setenv("TVM_NUM_THREADS", next().c_str(), 1);
    else if (a == "--report") report = next();
    else if (a == "--profile") profile_reps = std::atoi(next().c_str());
    else if (a == "--serve") serve_port = std::atoi(next().c_str());
    else if (a == "--host") host = next();
    else if (a == "--key") key = next();
    else if (a == "--session-timeout") timeout_s = std::atoi(next().c_str());
    else if (a == "--rpc-fd") rpc_fd = std::atoi(next().c_str());
    else if (a == "--workdir") g_workdir = next();
    else if (a == "--emulated") g_emulated = next();
    else if (a == "--device-info") { std::cout << DeviceJson() << std::endl; return 0; }
    else if (a == "-h" || a == "--help") {
      std::cout << "usage: edgec-run MODEL.so -i IN.npy... [-o OUT.npy...] [--runs N] [--warmup W]\n"
                   "                 [--threads T] [--report latency.json] [--profile REPS]\n"
                   "       edgec-run --serve PORT [--host ADDR] [--key KEY] [--session-timeout S]\n"
                   "       edgec-run --device-info\n";
      return 0;
    } else if (!a.empty() && a[0] == '-') Fail("unknown option " + a);
    else model = a;
  }
  try {
    if (rpc_fd >= 0) return ServeFd(rpc_fd);
    if (serve_port >= 0) return Serve(host, serve_port, key, timeout_s);
    if (model.empty()) Fail("no model given (edgec-run --help)");
    if (runs < 0 || warmup < 0) Fail("--runs and --warmup must be >= 0");
    return RunModel(model, inputs, outputs, runs, warmup, report, profile_reps);
  } catch (const std::exception& e) {
    std::cerr << "edgec-run: error: " << e.what() << std::endl;
    return 1;
  }
}
