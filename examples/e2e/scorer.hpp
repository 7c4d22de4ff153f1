#pragma once
// The E2E NLG challenge metrics, in C++, matching tuetschek/e2e-metrics' measure_scores.py:
// BLEU and NIST as its default mteval-v13a (-sig) Perl script computes them (lowercased,
// mteval's Western tokenization, closest-reference brevity penalty, BLEU smoothing of zero
// n-gram matches, NIST information weights from all references), and ROUGE-L (beta 1.2) and
// CIDEr-D's CIDEr as its pycocoevalcap computes them after PTB tokenization. METEOR needs a
// Java jar with paraphrase tables that cannot be had here: it is not computed.

#include <string>
#include <vector>

namespace e2e {

struct Scores {
  double bleu = 0, nist = 0, rouge_l = 0, cider = 0;
};

/// Scores hypotheses (one per MR) against their references (several per MR).
Scores score(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs);

/// mteval-v13a's tokenization (lowercased): the tokens BLEU and NIST count.
std::vector<std::string> mteval_tokens(const std::string& text);
/// A PTB-style tokenization as pycocoevalcap's PTBTokenizer (-lowerCase) followed by its removal of
/// punctuation tokens: what ROUGE-L and CIDEr count.
std::vector<std::string> ptb_tokens(const std::string& text);

double bleu(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs);
double nist(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs);
double rouge_l(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs);
double cider(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs);

/// Reads the files `generate` writes: hypotheses one per line; references one per line, MRs
/// separated by a blank line (e2e-metrics' multi-reference format). Errors name the file.
std::vector<std::string> read_hypotheses(const std::string& path);
std::vector<std::vector<std::string>> read_references(const std::string& path);

}  // namespace e2e
