#pragma once
// A run's progress as every example prints and logs it: a line on stderr every few steps and a
// CSV row per step (appended to when a run is resumed).

#include "loop.hpp"

#include <chrono>
#include <fstream>
#include <ostream>
#include <string>

namespace training {

/// Example:
/// \code
///   training::Progress progress(trainer.position(), trainer.total_steps(), out + "/train_log.csv",
///                               resumed, 10, rank == 0, "tokens");
///   double loss = trainer.step(...);
///   progress.record(epoch, loss, lr, trainer.position());
/// \endcode
class Progress {
 public:
  /// `start`: the position the run starts from (its steps and units are not counted in the
  /// rate); `csv` empty: no log; `append`: continue an existing log (a resumed run). `unit`
  /// names the position's counter in the log's header and the rate ("tokens", "examples").
  /// Only `lead` (rank 0) prints and writes.
  Progress(const Position& start, int64_t total_steps, const std::string& csv, bool append, int64_t every, bool lead,
           std::string unit);
  /// After a step: its log row and, every `every` steps and at the last, the progress line
  /// "step k/T | loss | lr | rate | ETA".
  void record(int64_t epoch, double loss, double lr, const Position& now);
  /// Ends the progress line (before an epoch's evaluation prints).
  void newline();
  double seconds() const;

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_ = Clock::now();
  int64_t first_step_, first_units_, total_, every_;
  bool lead_;
  std::string unit_;
  std::ofstream log_;
};

}  // namespace training
