// Built against the installed package: checks that the headers, the C++17 requirement
// and the torch dependency all come through find_package(lora), lora::distributed's too.
#include <lora/distributed.hpp>
#include <lora/lora.hpp>

#include <iostream>

int main() {
  torch::manual_seed(0);
  lora::LoRALinear layer(8, 4);
  layer->add_adapter("default", lora::AdapterOptions(2).alpha(4).init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  auto x = torch::randn({3, 8});
  auto expected = torch::nn::functional::linear(x, layer->weight, layer->bias) +
                  2.0 * torch::mm(torch::mm(x, layer->lora_A("default").t()), layer->lora_B("default").t());
  const double err = (layer(x) - expected).abs().max().item<double>();
  std::cout << "lora " << LORA_VERSION << " consumer: max error " << err << "\n";
  // A world of one (no launcher variables): gradients are only divided by the normaliser.
  lora::dist::ProcessGroup single;
  auto p = torch::ones({2}, torch::requires_grad());
  p.mutable_grad() = torch::full({2}, 4.0);
  single.all_reduce_gradients({p}, 2.0);
  const bool dist_ok = single.world_size() == 1 && torch::equal(p.grad(), torch::full({2}, 2.0));
  std::cout << "lora::dist single process: " << (dist_ok ? "ok" : "WRONG") << "\n";
  return err < 1e-5 && dist_ok ? 0 : 1;
}
