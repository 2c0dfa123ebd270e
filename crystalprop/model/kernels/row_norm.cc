// Row-wise LayerNorm over the last axis of an (M, F) float32 tensor, optionally followed by a
// sigmoid, and its gradient: MindSpore "aot" custom operators for CPU (see model/fused.py).
//
// Forward, per row x:  n = (x - mean(x)) / sqrt(var(x) + eps);  z = n * gamma + beta;  y = z or sigmoid(z)
// Backward, given dy:  dz = dy (or dy * y * (1 - y));  dbeta = sum_rows dz;  dgamma = sum_rows dz * n;
//                      dn = dz * gamma;  dx = (dn - mean(dn) - n * mean(dn * n)) / sqrt(var + eps)
// Each row is read once from memory (it stays in cache between the passes below); rows are
// split between threads, and each thread keeps its own dgamma/dbeta sums.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {
constexpr float kEps = 1e-5f;            // LAYER_NORM_EPS in layers.py
constexpr int64_t kRowsPerThread = 2048;  // below this, threads cost more than they save
int g_threads = 1;

struct RowStats {
  float mean;
  float inv_std;
};

RowStats Stats(const float *x, int64_t width) {
  float mean = 0.f;
  for (int64_t f = 0; f < width; ++f) mean += x[f];
  mean /= static_cast<float>(width);
  float var = 0.f;
  for (int64_t f = 0; f < width; ++f) {
    const float d = x[f] - mean;
    var += d * d;
  }
  return {mean, 1.f / std::sqrt(var / static_cast<float>(width) + kEps)};
}

// Runs body(first_row, last_row, thread_index) over [0, rows) on up to g_threads threads.
template <typename Body>
int ParallelRows(int64_t rows, Body body) {
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(g_threads, rows / kRowsPerThread));
  const int workers = static_cast<int>(wanted);
  std::vector<std::thread> pool;
  const int64_t chunk = (rows + workers - 1) / workers;
  for (int t = 1; t < workers; ++t) {
    pool.emplace_back(body, std::min(rows, t * chunk), std::min(rows, (t + 1) * chunk), t);
  }
  body(0, std::min(rows, chunk), 0);
  for (auto &thread : pool) thread.join();
  return workers;
}

template <bool kSigmoid>
int Forward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t rows = shapes[0][0], width = shapes[0][1];
  ParallelRows(rows, [=](int64_t first, int64_t last, int) {
    for (int64_t m = first; m < last; ++m) {
      const float *xr = x + m * width;
      float *yr = y + m * width;
      const RowStats s = Stats(xr, width);
      for (int64_t f = 0; f < width; ++f) {
        const float z = (xr[f] - s.mean) * s.inv_std * gamma[f] + beta[f];
        yr[f] = kSigmoid ? 1.f / (1.f + std::exp(-z)) : z;
      }
    }
  });
  return 0;
}

template <bool kSigmoid>
int Backward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *y = static_cast<const float *>(params[3]);
  const float *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dgamma = static_cast<float *>(params[6]);
  float *dbeta = static_cast<float *>(params[7]);
  const int64_t rows = shapes[0][0], width = shapes[0][1];
  const int slots = std::max(1, g_threads);
  std::vector<float> partial(static_cast<size_t>(slots) * 3 * width, 0.f);  // dgamma, dbeta, dn per thread
  const int used = ParallelRows(rows, [&](int64_t first, int64_t last, int t) {
    float *dg = partial.data() + static_cast<size_t>(t) * 3 * width;
    float *db = dg + width;
    float *dn = db + width;
    for (int64_t m = first; m < last; ++m) {
      const float *xr = x + m * width, *yr = y + m * width, *dyr = dy + m * width;
      float *dxr = dx + m * width;
      const RowStats s = Stats(xr, width);
      float mean_dn = 0.f, mean_dn_n = 0.f;
      for (int64_t f = 0; f < width; ++f) {
        const float n = (xr[f] - s.mean) * s.inv_std;
        const float dz = kSigmoid ? dyr[f] * yr[f] * (1.f - yr[f]) : dyr[f];
        db[f] += dz;
        dg[f] += dz * n;
        dn[f] = dz * gamma[f];
        mean_dn += dn[f];
        mean_dn_n += dn[f] * n;
      }
      mean_dn /= static_cast<float>(width);
      mean_dn_n /= static_cast<float>(width);
      for (int64_t f = 0; f < width; ++f) {
        const float n = (xr[f] - s.mean) * s.inv_std;
        dxr[f] = s.inv_std * (dn[f] - mean_dn - n * mean_dn_n);
      }
    }
  });
  for (int64_t f = 0; f < width; ++f) {
    float g = 0.f, b = 0.f;
    for (int t = 0; t < used; ++t) {
      g += partial[static_cast<size_t>(t) * 3 * width + f];
      b += partial[static_cast<size_t>(t) * 3 * width + width + f];
    }
    dgamma[f] = g;
    dbeta[f] = b;
  }
  return 0;
}

std::vector<int64_t> ShapeOf(int *ndims, int64_t **shapes, int i) {
  return std::vector<int64_t>(shapes[i], shapes[i] + ndims[i]);
}
}  // namespace

class AotExtra;

extern "C" {
void CrystalpropSetThreads(int threads) { g_threads = std::max(1, threads); }

int RowNorm(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Forward<false>(params, shapes);
}
int RowNormSigmoid(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Forward<true>(params, shapes);
}
int RowNormGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Backward<false>(params, shapes);
}
int RowNormSigmoidGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Backward<true>(params, shapes);
}
}

// Output shapes for dynamic-shape graphs: y like x; (dx, dgamma, dbeta) like (x, gamma, beta).
extern "C" std::vector<int64_t> RowNormInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return ShapeOf(ndims, shapes, 0);
}
extern "C" std::vector<int64_t> RowNormSigmoidInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return ShapeOf(ndims, shapes, 0);
}
extern "C" std::vector<std::vector<int64_t>> RowNormGradInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return {ShapeOf(ndims, shapes, 0), ShapeOf(ndims, shapes, 1), ShapeOf(ndims, shapes, 2)};
}
extern "C" std::vector<std::vector<int64_t>> RowNormSigmoidGradInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return {ShapeOf(ndims, shapes, 0), ShapeOf(ndims, shapes, 1), ShapeOf(ndims, shapes, 2)};
}
