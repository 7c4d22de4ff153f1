#pragma once
/// \file version.hpp
/// Version of the `lora` headers (kept equal to the CMake project version).

#define LORA_VERSION_MAJOR 0
#define LORA_VERSION_MINOR 1
#define LORA_VERSION_PATCH 0
#define LORA_VERSION "0.1.0"
