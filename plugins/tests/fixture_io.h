// Reader of the token-restore fixtures written by make_reference_data.py (format documented there).
#ifndef STAGEVAR_PLUGINS_TESTS_FIXTURE_IO_H
#define STAGEVAR_PLUGINS_TESTS_FIXTURE_IO_H

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace stagevar_test {

struct Case {
  std::string name;
  int B = 0, h = 0, w = 0, H = 0, W = 0, C = 0, r = 0;
  std::vector<float> prev, rows, expected;
  std::vector<int64_t> indices;
};

inline bool read_file(const std::string& path, std::vector<char>* bytes) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  bytes->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

// Fixtures are little-endian; every supported target (x86-64, aarch64) is too.
template <typename T>
inline bool take(const std::vector<char>& bytes, size_t* off, size_t count, std::vector<T>* out) {
  const size_t n = count * sizeof(T);
  if (*off + n > bytes.size()) return false;
  out->resize(count);
  if (n) std::memcpy(out->data(), bytes.data() + *off, n);
  *off += n;
  return true;
}

inline bool load_case(const std::string& dir, const std::string& name, Case* c, std::string* err) {
  std::vector<char> bytes;
  if (!read_file(dir + "/" + name, &bytes)) {
    *err = "cannot read " + dir + "/" + name;
    return false;
  }
  if (bytes.size() < 40 || std::memcmp(bytes.data(), "SVTR0001", 8) != 0) {
    *err = name + ": bad magic or short header";
    return false;
  }
  int32_t dims[8];
  std::memcpy(dims, bytes.data() + 8, sizeof(dims));
  c->name = name;
  c->B = dims[0]; c->h = dims[1]; c->w = dims[2]; c->H = dims[3]; c->W = dims[4];
  c->C = dims[5]; c->r = dims[6];
  size_t off = 40;
  const size_t B = c->B, C = c->C, r = c->r;
  const size_t m = static_cast<size_t>(c->h) * c->w, M = static_cast<size_t>(c->H) * c->W;
  if (!take(bytes, &off, B * m * C, &c->prev) || !take(bytes, &off, B * r * C, &c->rows) ||
      !take(bytes, &off, B * r, &c->indices) || !take(bytes, &off, B * M * C, &c->expected) ||
      off != bytes.size()) {
    *err = name + ": size does not match its header";
    return false;
  }
  return true;
}

inline bool list_cases(const std::string& dir, std::vector<std::string>* names) {
  std::ifstream f(dir + "/cases.txt");
  if (!f) return false;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) names->push_back(line);
  }
  return !names->empty();
}

}  // namespace stagevar_test

#endif  // STAGEVAR_PLUGINS_TESTS_FIXTURE_IO_H
