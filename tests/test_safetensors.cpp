// safetensors: files laid out byte by byte here, independently of the writer, and every
// validation rule with a crafted bad file.
#include "common.hpp"

#include <filesystem>
#include <fstream>

using namespace lora_test;
namespace st = lora::safetensors;
namespace fs = std::filesystem;

namespace {

/// 8-byte little-endian length + header + data, the length written byte by byte.
std::string craft(const std::string& header, const std::string& data = "", int64_t length = -1) {
  uint64_t n = length < 0 ? header.size() : static_cast<uint64_t>(length);
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string parse_error(const std::string& bytes) {
  return error_of<std::runtime_error>(
      [&] { st::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "bad.safetensors"); });
}

std::string floats(std::initializer_list<float> v) {
  std::string out(v.size() * 4, '\0');
  std::memcpy(&out[0], std::data(v), out.size());
  return out;
}

}  // namespace

class SafetensorsTest : public Seeded {};

TEST_F(SafetensorsTest, ReadsAHandLaidFileWithUnalignedOffsets) {
  // A 3-byte U8 tensor first, so the F32 tensor starts at the unaligned offset 3.
  const std::string header =
      R"({"__metadata__":{"format":"pt","note":"x"},"small":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
      R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[3,19]}})";
  const std::string bytes = craft(header, std::string("\x01\x02\x03", 3) + floats({1.5f, -2.f, 3.25f, 0.f}));
  auto dir = temp_dir("unaligned");
  write_text(dir / "a.safetensors", bytes);
  st::File file((dir / "a.safetensors").string());
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "x");
  auto tensors = lora::load_safetensors(file);
  EXPECT_TRUE(torch::equal(tensors["small"], torch::tensor({1, 2, 3}, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(tensors["w"], torch::tensor({1.5f, -2.f, 3.25f, 0.f}).view({2, 2})));
}

TEST_F(SafetensorsTest, WriterOutputMatchesTheFormatReadByHand) {
  auto dir = temp_dir("writer");
  lora::NamedTensors t;
  t.insert("b", torch::arange(6, torch::kInt64).view({2, 3}));
  t.insert("a", torch::tensor({0.5f, 0.25f}).to(torch::kBFloat16));
  lora::save_safetensors((dir / "x.safetensors").string(), t, {{"format", "pt"}});
  std::ifstream in(dir / "x.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u) << "header padded so data starts 8-aligned";
  auto j = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(j["b"]["dtype"], "I64");
  EXPECT_EQ(j["b"]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json({0, 48}));
  EXPECT_EQ(j["a"]["dtype"], "BF16");
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json({48, 52}));
  ASSERT_EQ(bytes.size(), 8 + n + 52);
  int64_t v4 = 0;
  std::memcpy(&v4, bytes.data() + 8 + n + 4 * 8, 8);
  EXPECT_EQ(v4, 4);
  // bf16 0.5 is 0x3F00, little-endian.
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 48]), 0x00);
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 49]), 0x3F);
}

TEST_F(SafetensorsTest, EveryDtypeRoundTrips) {
  auto dir = temp_dir("dtypes");
  lora::NamedTensors t;
  for (auto d : {torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16, torch::kInt64, torch::kInt32,
                 torch::kInt16, torch::kInt8, torch::kUInt8, torch::kBool})
    t.insert(std::string(c10::toString(d)), (torch::randn({3, 2}) * 10).to(d));
  t.insert("empty", torch::zeros({0, 4}));
  t.insert("scalar", torch::tensor(7.0));
  t.insert("strided", torch::arange(12.).view({3, 4}).t());
  const auto path = (dir / "all.safetensors").string();
  lora::save_safetensors(path, t);
  auto back = lora::load_safetensors(path);
  ASSERT_EQ(back.keys(), t.keys());
  for (const auto& item : t) {
    EXPECT_EQ(back[item.key()].scalar_type(), item.value().scalar_type()) << item.key();
    EXPECT_TRUE(torch::equal(back[item.key()], item.value())) << item.key();
  }
}

TEST_F(SafetensorsTest, EachValidationRuleHasItsError) {
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data = floats({1, 2});
  EXPECT_EQ(parse_error(craft(ok, data)), "");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string("\x05\x00\x00", 3), "fewer than the 8-byte header length"},
      {craft(ok, data, 100000001), "exceeds the 100,000,000-byte limit"},
      {craft(ok, data, static_cast<int64_t>(ok.size() + data.size() + 1)), "runs past the end of the file"},
      {craft("[" + ok.substr(1), data), "does not start with '{'"},
      {craft(R"({"t":{"dtype":"F32",})", ""), "not valid JSON"},
      {craft(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
       "tensor 't' appears twice"},
      {craft(R"({"__metadata__":{"k":1}})"), "__metadata__ entry 'k' is not a string"},
      {craft(R"({"t":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", "ab"), "tensor 't': unknown dtype 'F8'"},
      {craft(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", data), "tensor 't': unknown field 'x'"},
      {craft(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", data), "tensor 't': missing array field 'shape'"},
      {craft(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data), "shape entries must be non-negative"},
      {craft(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data), "has 8 bytes, but shape and dtype F32 need 3 x 4"},
      {craft(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data), "past the 8-byte data buffer"},
      {craft(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data), "end before they begin"},
      {craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
       "tensor 'b' starts at byte 4 of the data buffer, expected 8: it overlaps"},
      {craft(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data), "expected 0: there is a gap before it"},
      {craft(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data), "cover 4 of the 8 data bytes"},
      {craft(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", data), "shape overflows"},
  };
  for (const auto& [bytes, expected] : cases) {
    const auto msg = parse_error(bytes);
    EXPECT_NE(msg.find(expected), std::string::npos) << "expected '" << expected << "', got '" << msg << "'";
    EXPECT_NE(msg.find("'bad.safetensors'"), std::string::npos) << msg;
  }
}

TEST_F(SafetensorsTest, TruncatedFileOnDiskIsReported) {
  auto dir = temp_dir("truncated");
  const auto path = (dir / "t.safetensors").string();
  lora::NamedTensors t;
  t.insert("w", torch::randn({4, 4}));
  lora::save_safetensors(path, t);
  fs::resize_file(path, fs::file_size(path) - 10);
  auto msg = error_of<std::runtime_error>([&] { lora::load_safetensors(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated?"), std::string::npos) << msg;
}

TEST_F(SafetensorsTest, InterruptedSaveLeavesThePreviousFileIntact) {
  auto dir = temp_dir("atomic");
  const auto path = (dir / "w.safetensors").string();
  lora::NamedTensors old;
  old.insert("w", torch::ones({3}));
  lora::save_safetensors(path, old);
  // An exception in the middle of writing the body.
  EXPECT_THROW(lora::atomic_write(path, [](std::FILE* f) {
                 std::fputs("partial", f);
                 throw std::runtime_error("disk on fire");
               }),
               std::runtime_error);
  // A tensor that cannot be stored, after a good one.
  lora::NamedTensors bad;
  bad.insert("ok", torch::zeros({2}));
  bad.insert("complex", torch::zeros({2}, torch::kComplexFloat));
  EXPECT_NE(error_of<std::invalid_argument>([&] { lora::save_safetensors(path, bad); }).find("tensor 'complex'"), std::string::npos);
  EXPECT_TRUE(torch::equal(lora::load_safetensors(path)["w"], torch::ones({3})));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "no temporary file left behind";
}

TEST_F(SafetensorsTest, MissingFileIsNamed) {
  auto msg = error_of<std::runtime_error>([] { lora::load_safetensors("/nonexistent/x.safetensors"); });
  EXPECT_NE(msg.find("cannot open '/nonexistent/x.safetensors'"), std::string::npos) << msg;
}
