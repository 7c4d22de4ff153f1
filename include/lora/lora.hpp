#pragma once
/// \file lora.hpp
/// Umbrella header of `lora`, low-rank adaptation (Hu et al., 2021) for LibTorch.
///
/// Example:
/// \code
///   #include <lora/lora.hpp>
///   auto report = lora::inject_lora(*model, lora::LoRAConfig().r(8).alpha(16).target_modules({"q", "v"}));
///   torch::optim::AdamW opt(lora::lora_parameters(*model), torch::optim::AdamWOptions(1e-3));
///   // ... train ...
///   lora::merge(*model);
/// \endcode

#include <lora/version.hpp>
#include <lora/config.hpp>
#include <lora/variant.hpp>
#include <lora/dora.hpp>
#include <lora/layer.hpp>
#include <lora/mixed.hpp>
#include <lora/linear.hpp>
#include <lora/embedding.hpp>
#include <lora/state.hpp>
#include <lora/target.hpp>
#include <lora/inject.hpp>
#include <lora/merge.hpp>
#include <lora/safetensors.hpp>
#include <lora/tensor_file.hpp>
#include <lora/peft_config.hpp>
#include <lora/adapter_io.hpp>
#include <lora/archive.hpp>
#include <lora/scopes.hpp>
#include <lora/combine.hpp>
#include <lora/analysis.hpp>
