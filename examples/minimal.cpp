// The smallest complete LoRA workflow: pretrain a base model, inject adapters,
// fine-tune only them on a new task, merge for zero-latency inference, unmerge to
// switch back. Runs in seconds on a CPU.
#include <lora/lora.hpp>

#include <iostream>

// A model declares LoRA-capable layers where it would declare torch::nn::Linear.
struct MlpImpl : torch::nn::Module {
  MlpImpl() {
    fc1 = register_module("fc1", lora::LoRALinear(16, 64));
    fc2 = register_module("fc2", lora::LoRALinear(64, 64));
    out = register_module("out", lora::LoRALinear(64, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return out(torch::relu(fc2(torch::relu(fc1(x))))).squeeze(-1); }
  lora::LoRALinear fc1{nullptr}, fc2{nullptr}, out{nullptr};
};
TORCH_MODULE(Mlp);

static double train(Mlp& model, const std::vector<torch::Tensor>& params, const torch::Tensor& x,
                    const torch::Tensor& y, int steps, double lr) {
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(lr).weight_decay(0.0));
  model->train();
  double loss_value = 0;
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    auto loss = torch::mse_loss(model(x), y);
    loss.backward();
    opt.step();
    loss_value = loss.item<double>();
  }
  return loss_value;
}

int main() {
  torch::manual_seed(0);
  Mlp model;
  auto x = torch::randn({512, 16});
  auto task_a = x.sum(1).sin();                        // what the base model learns
  auto task_b = x.sum(1).sin() + 0.5 * x.select(1, 0);  // a related task for the adapter

  train(model, model->parameters(), x, task_a, 300, 3e-3);
  model->eval();
  std::cout << "base model, task A mse: " << torch::mse_loss(model(x), task_a).item<double>() << "\n";

  auto report = lora::inject_lora(*model, lora::LoRAConfig().r(4).alpha(8).target_modules({"fc1", "fc2", "out"}));
  std::cout << report << "\n";

  model->eval();
  torch::Tensor before_b;
  {
    torch::NoGradGuard no_grad;
    before_b = torch::mse_loss(model(x), task_b);
  }
  double tuned = train(model, lora::lora_parameters(*model), x, task_b, 300, 1e-2);
  std::cout << "task B mse: " << before_b.item<double>() << " before LoRA, " << tuned << " after\n";

  model->eval();
  torch::NoGradGuard no_grad;
  auto adapted = model(x);
  lora::merge(*model);  // W0 += s·B·A: inference now costs exactly what the base model costs
  std::cout << "max |merged - unmerged| = " << (model(x) - adapted).abs().max().item<double>() << "\n";
  lora::unmerge(*model);  // W0 restored bit for bit
  lora::set_adapter(*model, {});
  std::cout << "adapters off, task A mse again: " << torch::mse_loss(model(x), task_a).item<double>() << "\n";
  return 0;
}
