// The checks of the torch-free ctest programs (tests/cpp, tests/cuda): each
// counted, a failed one printed, and one exit status for the program.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

inline int passes = 0, failures = 0;

inline void expect(bool ok, const std::string& what) {
  if (ok) {
    ++passes;
  } else {
    std::printf("FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// main()'s return value: prints the counts.
inline int test_summary() {
  std::printf("%d passed, %d failed\n", passes, failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
