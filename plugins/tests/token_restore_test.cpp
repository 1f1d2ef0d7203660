// ctest: the CPU reference against the numpy fixtures, plus its argument checks.
// Usage: token_restore_test <fixture dir>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "fixture_io.h"
#include "token_restore.h"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  }
}

void error_paths() {
  std::vector<float> prev(4, 1.0f), rows(2, 2.0f), out(8, -7.0f);
  std::vector<int64_t> idx = {3};
  // B=1, 2x2 -> 2x2, C=2, r=1
  check(stagevar_token_restore_cpu(prev.data(), rows.data(), idx.data(), 1, 1, 2, 2, 2, 2, 1,
                                   out.data()) == STAGEVAR_OK, "valid call");
  check(out[6] == 2.0f && out[7] == 2.0f && out[0] == 1.0f, "scatter of the valid call");
  check(stagevar_token_restore_cpu(prev.data(), rows.data(), idx.data(), 0, 1, 2, 2, 2, 2, 1,
                                   out.data()) == STAGEVAR_ERR_BAD_SIZE, "B = 0");
  check(stagevar_token_restore_cpu(prev.data(), rows.data(), idx.data(), 1, 1, 2, 2, 2, 2, 5,
                                   out.data()) == STAGEVAR_ERR_BAD_SIZE, "r > H*W");
  check(stagevar_token_restore_cpu(prev.data(), rows.data(), idx.data(), 1, 1, 2, 2, 2, 2, -1,
                                   out.data()) == STAGEVAR_ERR_BAD_SIZE, "r < 0");
  check(stagevar_token_restore_cpu(nullptr, rows.data(), idx.data(), 1, 1, 2, 2, 2, 2, 1,
                                   out.data()) == STAGEVAR_ERR_NULL_POINTER, "null prev");
  std::vector<float> untouched(8, -7.0f);
  for (int64_t bad : {int64_t{4}, int64_t{-1}}) {
    idx[0] = bad;
    check(stagevar_token_restore_cpu(prev.data(), rows.data(), idx.data(), 1, 1, 2, 2, 2, 2, 1,
                                     untouched.data()) == STAGEVAR_ERR_INDEX_RANGE,
          "index out of range");
  }
  check(untouched == std::vector<float>(8, -7.0f), "out untouched on error");
  // Duplicates: the later write wins.
  std::vector<float> rows2 = {1.0f, 1.0f, 5.0f, 5.0f};
  std::vector<int64_t> dup = {2, 2};
  check(stagevar_token_restore_cpu(prev.data(), rows2.data(), dup.data(), 1, 1, 2, 2, 2, 2, 2,
                                   out.data()) == STAGEVAR_OK && out[4] == 5.0f,
        "duplicate index: later write wins");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<std::string> names;
  if (!stagevar_test::list_cases(dir, &names)) {
    std::fprintf(stderr, "FAIL: no cases listed in %s/cases.txt\n", dir.c_str());
    return 1;
  }
  for (const std::string& name : names) {
    stagevar_test::Case c;
    std::string err;
    if (!stagevar_test::load_case(dir, name, &c, &err)) {
      check(false, err);
      continue;
    }
    std::vector<float> out(c.expected.size(), std::nanf(""));
    const int rc = stagevar_token_restore_cpu(c.prev.data(), c.rows.data(), c.indices.data(), c.B,
                                              c.h, c.w, c.H, c.W, c.C, c.r, out.data());
    if (rc != STAGEVAR_OK) {
      check(false, name + ": returned " + std::to_string(rc));
      continue;
    }
    double max_diff = 0.0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double d = std::fabs(static_cast<double>(out[i]) - c.expected[i]);
      if (!(d <= max_diff)) max_diff = d;  // NaN propagates as a failure
    }
    const bool ok = max_diff <= 1e-5;
    std::printf("%-36s B=%d %dx%d -> %dx%d C=%d r=%-5d max|diff|=%.3g %s\n", name.c_str(), c.B,
                c.h, c.w, c.H, c.W, c.C, c.r, max_diff, ok ? "ok" : "FAIL");
    check(ok, name + ": max abs diff above 1e-5");
  }
  error_paths();
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all %zu cases passed\n", names.size());
  return 0;
}
