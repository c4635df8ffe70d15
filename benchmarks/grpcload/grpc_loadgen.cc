// grpc_loadgen: a closed-loop gRPC load generator in C++ (gRPC's own C++ library, Debian libgrpc++-dev).
//
// Why it exists: on this project's 2-core machine the load generator shares the cores with the server
// it measures. The Python generators (grpc.aio) spend 300-450 us of CPU per small call and about 2 ms
// per 600 KB mutual-TLS call, CPU that every server under test then lacks. h2load is cheap but cannot
// see gRPC statuses (they travel in HTTP/2 trailers). This tool is cheap *and* checks every status.
//
// What it does: sends one pre-serialized request (the file's bytes, as they are) to one unary method,
// --concurrency clients each with one call outstanding (closed loop), each client on its own channel
// (its own TCP connection, as the reference benchmark client), driven by --threads completion-queue
// threads. Calls that end before the warm-up is over are not counted; calls that end in the measured
// window are counted, by status. Prints one JSON object in loadgen.py's shape.
//
//   grpc_loadgen --target 127.0.0.1:8500 --method /tensorflow.serving.PredictionService/Predict
//       --request predict.bin --concurrency 16 --threads 2 --duration 10 --warmup 3
//       [--t0 EPOCH_S] [--startup S] [--timeout S]
//       [--ca ca.crt [--cert client.crt --key client.key] [--server-name NAME]]

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
  std::string target, method, request, ca, cert, key, server_name;
  long concurrency = 16, threads = 2;
  double duration = 10, warmup = 3, startup = 1.5, timeout = 30, t0 = 0, connect_timeout = 30, drain = 5;
};

constexpr double kMaxSeconds = 1e6;  // longer than any run; keeps every conversion to microseconds in range

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "grpc_loadgen: error: %s\n", msg.c_str());
  std::exit(2);
}

// The window's edges are wall-clock times (so that a caller can sample a server's CPU over the same
// window); latencies come from the monotonic clock.
double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double mono_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::chrono::system_clock::time_point wall_point(double epoch_s) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(epoch_s)));
}

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

std::string read_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) die(std::string(what) + " " + path + ": not a regular file");
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  if (!f || !(s << f.rdbuf()) || f.bad()) {
    if (std::filesystem::file_size(path, ec) == 0 && !ec) return "";  // an empty file is a valid empty message
    die(std::string(what) + " " + path + ": cannot be read");
  }
  return s.str();
}

double parse_seconds(const std::string& flag, const char* text, double min, bool min_inclusive) {
  char* end = nullptr;
  double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !std::isfinite(v)) die(flag + ": not a number: " + text);
  if (v < min || (!min_inclusive && v == min) || v > kMaxSeconds)
    die(flag + ": must be " + (min_inclusive ? ">= " : "> ") + std::to_string(static_cast<int>(min)) +
        " and <= 1e6 seconds, got " + text);
  return v;
}

long parse_count(const std::string& flag, const char* text, long max) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE) die(flag + ": not a whole number: " + text);
  if (v < 1 || v > max) die(flag + ": must be between 1 and " + std::to_string(max) + ", got " + text);
  return v;
}

const char* const kUsage =
    "usage: grpc_loadgen --target HOST:PORT --method /pkg.Service/Method --request FILE\n"
    "  [--concurrency N=16] [--threads T=2] [--duration S=10] [--warmup S=3]\n"
    "  [--startup S=1.5] [--timeout S=30] [--t0 EPOCH_S] [--connect-timeout S=30] [--drain S=5]\n"
    "  [--ca FILE [--cert FILE --key FILE] [--server-name NAME]]\n"
    "Closed-loop unary calls of one pre-serialized request; prints one JSON object.\n"
    "The warm-up ends at t0 + startup + warmup (t0 = now by default; the clients must be connected\n"
    "by then), the measured window lasts --duration seconds after it. --timeout 0: no per-call\n"
    "deadline. Calls still running --drain seconds after the window are cancelled and reported.";

Options parse(int argc, char** argv) {
  Options o;
  static const std::set<std::string> known = {
      "--target", "--method", "--request", "--ca", "--cert", "--key", "--server-name", "--concurrency",
      "--threads", "--duration", "--warmup", "--startup", "--timeout", "--t0", "--connect-timeout", "--drain"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::puts(kUsage);
      std::exit(0);
    }
    if (!known.count(a)) die("unknown option " + a + " (see --help)");
    if (i + 1 >= argc) die(a + ": needs a value");
    const char* v = argv[++i];
    if (a == "--target") o.target = v;
    else if (a == "--method") o.method = v;
    else if (a == "--request") o.request = v;
    else if (a == "--ca") o.ca = v;
    else if (a == "--cert") o.cert = v;
    else if (a == "--key") o.key = v;
    else if (a == "--server-name") o.server_name = v;
    else if (a == "--concurrency") o.concurrency = parse_count(a, v, 100000);
    else if (a == "--threads") o.threads = parse_count(a, v, 1024);
    else if (a == "--duration") o.duration = parse_seconds(a, v, 0, false);
    else if (a == "--warmup") o.warmup = parse_seconds(a, v, 0, true);
    else if (a == "--startup") o.startup = parse_seconds(a, v, 0, true);
    else if (a == "--timeout") o.timeout = parse_seconds(a, v, 0, true);
    else if (a == "--connect-timeout") o.connect_timeout = parse_seconds(a, v, 0, false);
    else if (a == "--drain") o.drain = parse_seconds(a, v, 0, true);
    else if (a == "--t0") {
      char* end = nullptr;
      o.t0 = std::strtod(v, &end);
      if (end == v || *end != '\0' || !std::isfinite(o.t0) || o.t0 <= 0) die(std::string("--t0: not a positive epoch time: ") + v);
    }
  }
  if (o.target.empty() || o.method.empty() || o.request.empty()) die("--target, --method and --request are required");
  if (o.method[0] != '/') die("--method must be a path such as /pkg.Service/Method, got " + o.method);
  if (o.cert.empty() != o.key.empty()) die("--cert and --key go together");
  if (!o.cert.empty() && o.ca.empty()) die("--cert/--key need --ca (TLS)");
  o.threads = std::min(o.threads, o.concurrency);
  return o;
}

std::string num(double x) {
  if (!std::isfinite(x)) return "NaN";  // Python's json reads it, as loadgen.py writes it
  char b[64];
  std::snprintf(b, sizeof b, "%.6f", x);
  return b;
}

// A JSON string literal: quotes, backslashes and control bytes escaped (other bytes pass as they are).
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

const char* code_name(grpc::StatusCode c) {
  static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  int i = static_cast<int>(c);
  return (i >= 0 && i <= 16) ? names[i] : "UNKNOWN_CODE";
}

// One closed-loop client: its own channel and stub, one call in flight at a time.
struct Client {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> stub;
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::ByteBuffer reply;
  grpc::Status status;
  double t_start = 0;    // monotonic, for the latency
  bool cancelled = false;  // cancelled at the end of the drain: reported as unfinished
};

// What one completion-queue thread saw; merged after the run (no locks on the hot path).
struct Tally {
  std::vector<double> latencies;
  std::map<std::string, long> errors;
  long warmup_errors = 0;
  long warmup_requests = 0;
};

class Run {
 public:
  Run(const Options& o, const std::string& body) : o_(o) {
    grpc::Slice slice(body);
    request_ = grpc::ByteBuffer(&slice, 1);  // built once; every call shares its bytes (refcounted)
    t_measure_ = (o.t0 > 0 ? o.t0 : wall_now()) + o.startup + o.warmup;
    t_stop_ = t_measure_ + o.duration;
  }

  void connect() {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (o_.ca.empty()) {
      creds = grpc::InsecureChannelCredentials();
    } else {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = read_file(o_.ca, "--ca");
      if (ssl.pem_root_certs.empty()) die("--ca " + o_.ca + ": empty file");
      if (!o_.cert.empty()) {
        ssl.pem_cert_chain = read_file(o_.cert, "--cert");
        ssl.pem_private_key = read_file(o_.key, "--key");
      }
      creds = grpc::SslCredentials(ssl);
    }
    clients_.resize(o_.concurrency);
    for (auto& c : clients_) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a TCP connection of its own per client
      args.SetMaxReceiveMessageSize(-1);
      args.SetMaxSendMessageSize(-1);
      if (!o_.server_name.empty()) args.SetSslTargetNameOverride(o_.server_name);
      c.channel = grpc::CreateCustomChannel(o_.target, creds, args);
      c.channel->GetState(true);  // start connecting now: all clients at once, not one after another
      c.stub = std::make_unique<grpc::GenericStub>(c.channel);
    }
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<long>(o_.connect_timeout * 1e6));
    char secs[32];
    std::snprintf(secs, sizeof secs, "%g", o_.connect_timeout);
    for (auto& c : clients_)
      if (!c.channel->WaitForConnected(deadline))
        die("could not connect to " + o_.target + " within " + secs +
            " s (server down, or a TLS handshake it refused)");
    double late = wall_now() - t_measure_;
    if (late >= 0) {
      char b[160];
      std::snprintf(b, sizeof b, "the clients connected %.2f s after the warm-up had ended; raise --startup", late);
      die(b);
    }
  }

  void start(Client& c, grpc::CompletionQueue* cq) {
    c.reader.reset();  // the previous call's reader before its context
    c.ctx = std::make_unique<grpc::ClientContext>();
    if (o_.timeout > 0)
      c.ctx->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<long>(o_.timeout * 1e6)));
    c.reply.Clear();
    c.t_start = mono_now();
    c.reader = c.stub->PrepareUnaryCall(c.ctx.get(), o_.method, request_, cq);
    c.reader->StartCall();
    c.reader->Finish(&c.reply, &c.status, &c);
  }

  void drive(long index, Tally* tally) {
    grpc::CompletionQueue cq;
    std::vector<Client*> mine;
    for (long i = index; i < o_.concurrency; i += o_.threads) mine.push_back(&clients_[i]);
    for (Client* c : mine) start(*c, &cq);
    long active = static_cast<long>(mine.size());
    // Calls still running this long after the window are cancelled (a stalled server must not keep
    // the tool waiting), and counted as unfinished.
    const auto drain_deadline = wall_point(t_stop_ + o_.drain);
    bool cancelling = false;
    while (active > 0) {
      void* tag = nullptr;
      bool ok = false;
      auto got = cancelling ? (cq.Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                                  : grpc::CompletionQueue::SHUTDOWN)
                            : cq.AsyncNext(&tag, &ok, drain_deadline);
      if (got == grpc::CompletionQueue::SHUTDOWN) break;
      if (got == grpc::CompletionQueue::TIMEOUT) {
        for (Client* c : mine) {
          c->cancelled = true;  // only the calls still running will report back from here on
          c->ctx->TryCancel();
        }
        cancelling = true;
        continue;
      }
      Client& c = *static_cast<Client*>(tag);
      double t1 = wall_now();
      double latency = mono_now() - c.t_start;
      --active;
      if (c.cancelled && c.status.error_code() == grpc::StatusCode::CANCELLED) {
        ++tally->errors["unfinished (cancelled after --drain)"];
        continue;
      }
      const char* err = nullptr;
      if (!c.status.ok()) err = code_name(c.status.error_code());
      else if (c.reply.Length() == 0) err = "empty reply";
      if (t1 < t_measure_) {
        ++tally->warmup_requests;
        if (err) ++tally->warmup_errors;
      } else if (t1 <= t_stop_) {
        if (err) ++tally->errors[err];
        else tally->latencies.push_back(latency);
      } else if (err) {
        ++tally->errors[std::string("after the window: ") + err];  // not timed, but never hidden
      }
      if (t1 < t_stop_) {
        start(c, &cq);
        ++active;
      }
    }
    cq.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq.Next(&tag, &ok)) {
    }
  }

  void go() {
    std::vector<Tally> tallies(o_.threads);
    std::vector<std::thread> threads;
    double cpu_start = 0, cpu_stop = 0;
    // The CPU of the measured window only: sampled when it opens and when it closes (read after join).
    std::thread marker([&] {
      std::this_thread::sleep_for(std::chrono::duration<double>(std::max(0.0, t_measure_ - wall_now())));
      cpu_start = cpu_seconds();
      std::this_thread::sleep_for(std::chrono::duration<double>(std::max(0.0, t_stop_ - wall_now())));
      cpu_stop = cpu_seconds();
    });
    for (long t = 0; t < o_.threads; ++t) threads.emplace_back(&Run::drive, this, t, &tallies[t]);
    for (auto& th : threads) th.join();
    marker.join();
    report(tallies, cpu_stop - cpu_start);
  }

 private:
  static double percentile(const std::vector<double>& v, double p) {
    if (v.empty()) return NAN;
    double k = (v.size() - 1) * p / 100.0;
    size_t lo = static_cast<size_t>(std::floor(k)), hi = static_cast<size_t>(std::ceil(k));
    return v[lo] + (v[hi] - v[lo]) * (k - lo);
  }

  void report(const std::vector<Tally>& tallies, double cpu) {
    std::vector<double> lat;
    std::map<std::string, long> errors;
    long warm = 0, warm_requests = 0, nerr = 0;
    for (const auto& t : tallies) {
      lat.insert(lat.end(), t.latencies.begin(), t.latencies.end());
      for (const auto& [k, n] : t.errors) errors[k] += n, nerr += n;
      warm += t.warmup_errors;
      warm_requests += t.warmup_requests;
    }
    std::sort(lat.begin(), lat.end());
    double sum = 0;
    for (double x : lat) sum += x;
    std::ostringstream j;
    j << "{\"kind\": \"grpc\", \"tool\": \"cpp\", \"target\": " << json_string(o_.target)
      << ", \"concurrency\": " << o_.concurrency << ", \"procs\": 1, \"threads\": " << o_.threads
      << ", \"tls\": " << (o_.ca.empty() ? "false" : "true") << ", \"duration_s\": " << num(o_.duration)
      << ", \"requests\": " << lat.size() << ", \"rps\": " << num(lat.size() / o_.duration)
      << ", \"p50_ms\": " << num(1e3 * percentile(lat, 50)) << ", \"p99_ms\": " << num(1e3 * percentile(lat, 99))
      << ", \"mean_ms\": " << num(lat.empty() ? NAN : 1e3 * sum / lat.size()) << ", \"errors\": " << nerr
      << ", \"errors_by_kind\": {";
    bool first = true;
    for (const auto& [k, n] : errors) {
      j << (first ? "" : ", ") << json_string(k) << ": " << n;
      first = false;
    }
    j << "}, \"warmup_errors\": " << warm << ", \"warmup_requests\": " << warm_requests
      << ", \"loadgen_cpu_pct_per_proc\": [" << num(100.0 * cpu / o_.duration)
      << "], \"loadgen_cpu_us_per_req\": " << num(lat.empty() ? NAN : 1e6 * cpu / lat.size()) << "}";
    std::puts(j.str().c_str());
  }

  Options o_;
  grpc::ByteBuffer request_;
  std::vector<Client> clients_;
  double t_measure_ = 0, t_stop_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil checks every mutex acquisition for lock-order cycles (a debugging aid that showed as
  // several per cent of this tool's CPU in `perf`); a load generator has no use for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Options o = parse(argc, argv);
  std::string body = read_file(o.request, "--request");
  Run run(o, body);
  run.connect();
  run.go();
  return 0;
}
