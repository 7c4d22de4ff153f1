#include "progress.hpp"

#include <algorithm>
#include <iomanip>
#include <iostream>

namespace training {

Progress::Progress(const Position& start, int64_t total_steps, const std::string& csv, bool append, int64_t every, bool lead,
                   std::string unit)
    : first_step_(start.step), first_units_(start.tokens), total_(total_steps), every_(std::max<int64_t>(1, every)), lead_(lead),
      unit_(std::move(unit)) {
  if (!lead_ || csv.empty()) return;
  log_.open(csv, append ? std::ios::app : std::ios::trunc);
  if (!log_) throw std::runtime_error("cannot write the training log '" + csv + "'");
  if (!append) log_ << "step,epoch,loss,lr," << unit_ << ",seconds\n";
}

double Progress::seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

void Progress::record(int64_t epoch, double loss, double lr, const Position& now) {
  if (!lead_) return;
  const double secs = seconds();
  if (log_.is_open()) log_ << now.step << "," << epoch << "," << loss << "," << lr << "," << now.tokens << "," << secs << "\n";
  if (now.step % every_ != 0 && now.step != total_) return;
  const double rate = double(now.tokens - first_units_) / std::max(secs, 1e-9);
  const std::string short_unit = unit_ == "tokens" ? "tok" : unit_ == "examples" ? "ex" : unit_;
  std::cerr << "\rstep " << now.step << "/" << total_ << " | loss " << std::fixed << std::setprecision(4) << loss << " | lr "
            << std::scientific << std::setprecision(2) << lr << std::fixed << " | " << std::setprecision(0) << rate << " "
            << short_unit << "/s | ETA " << double(total_ - now.step) * secs / double(std::max<int64_t>(1, now.step - first_step_))
            << " s   " << std::flush;
}

void Progress::newline() {
  if (lead_) std::cerr << "\n";
}

}  // namespace training
