// Row-wise LayerNorm over the last axis of an (M, F) float32 tensor, the Matformer attention
// gate built on it, their gradients (the gate's summed straight onto its per-atom and per-length
// tables), a row scatter-add and its gradient, training-mode BatchNorm, and for inference the
// whole message pass of K stacked members (gate, product, LayerNorm, scatter): MindSpore "aot"
// custom operators for CPU (model/fused.py).
//
// LayerNorm, per row x:  n = (x - mean(x)) / sqrt(var(x) + eps);  y = n * gamma + beta
// Its backward, given dy: dbeta = sum_rows dy;  dgamma = sum_rows dy * n;  dn = dy * gamma;
//                         dx = (dn - mean(dn) - n * mean(dn * n)) / sqrt(var + eps)
// RowNorm normalises x + bias, so its dbias = sum_rows dx.
// Gate: out = u * g with g = sigmoid(LN(a)), so du = dout * g and LN's dy = dout * u * g * (1 - g);
// a and u are built from per-atom and per-bond-length rows as they are needed.
// Forward passes also evaluate K stacked ensemble members at once: bias, gamma and beta may hold
// K * F values (member k's at k * F), and the M rows are then K equal member-major blocks, row m
// belonging to member m / (M / K). K = 1 is the plain layer; the backward passes take K = 1 only.
// Each row is read once from memory (it stays in cache between the passes below). Rows are
// cut into fixed blocks that threads share out; dgamma/dbeta are summed per block, then the
// blocks in order, so the gradients are the same bits whatever the number of threads.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace {
constexpr float kEps = 1e-5f;           // LAYER_NORM_EPS in layers.py
constexpr int64_t kRowsPerBlock = 2048;  // rows per unit of work: below this, threads cost more than they save
std::atomic<int> g_threads{1};

// The thread count set from Python, read once per call so that buffers and work agree.
int Threads() { return std::max(1, g_threads.load(std::memory_order_relaxed)); }

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

// Members stacked in a per-member vector of `length` floats for rows `width` wide: K, or 0
// where length is no positive multiple of width or the rows do not split into K blocks.
int64_t Members(int64_t length, int64_t width, int64_t rows) {
  if (width <= 0 || length <= 0 || length % width != 0) return 0;
  const int64_t members = length / width;
  return rows % members == 0 ? members : 0;
}

// Offset of row m's member in the stacked vectors: (m / (rows / members)) * width.
inline int64_t MemberOffset(int64_t m, int64_t rows_per_member, int64_t members, int64_t width) {
  return members == 1 ? 0 : (m / rows_per_member) * width;
}

int64_t Blocks(int64_t rows) { return (rows + kRowsPerBlock - 1) / kRowsPerBlock; }

// Runs body(first_row, last_row, block, thread) on each block of kRowsPerBlock rows of [0, rows),
// the blocks shared out in consecutive runs between up to `threads` threads (thread < threads).
template <typename Body>
void ParallelBlocks(int64_t rows, int threads, Body body) {
  const int64_t blocks = Blocks(rows);
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, blocks)));
  auto run = [=](int t) {
    for (int64_t b = blocks * t / workers; b < blocks * (t + 1) / workers; ++b) {
      body(b * kRowsPerBlock, std::min(rows, (b + 1) * kRowsPerBlock), b, t);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < workers; ++t) pool.emplace_back(run, t);
  run(0);
  for (auto &thread : pool) thread.join();
}

// LayerNorm's backward step on one row. On entry dn holds dz = dL/dy; adds dz to dbeta and
// dz * n to dgamma, leaves dn = dz * gamma, and returns mean(dn) and mean(dn * n).
struct DnMeans {
  float dn;
  float dn_n;
};

inline DnMeans AccumulateRow(float *__restrict__ dn, const float *__restrict__ n,
                             const float *__restrict__ gamma, float *__restrict__ dg,
                             float *__restrict__ db, int64_t width) {
  float mean_dn = 0.f, mean_dn_n = 0.f;
  for (int64_t k = 0; k < width; ++k) {
    const float dz = dn[k];
    db[k] += dz;
    dg[k] += dz * n[k];
    dn[k] = dz * gamma[k];
    mean_dn += dn[k];
    mean_dn_n += dn[k] * n[k];
  }
  return {mean_dn / static_cast<float>(width), mean_dn_n / static_cast<float>(width)};
}

// Adds up the per-block sums in block order: block b's `count` sums of width floats start at
// b * count * width; out[i] receives the i-th of them.
void SumBlocks(const std::vector<float> &sums, int64_t blocks, int count, int64_t width, float **out) {
  for (int i = 0; i < count; ++i) {
    for (int64_t k = 0; k < width; ++k) {
      float total = 0.f;
      for (int64_t b = 0; b < blocks; ++b) total += sums[static_cast<size_t>((b * count + i) * width + k)];
      out[i][k] = total;
    }
  }
}

// RowNorm applies LN to z = x + bias (bias (F,) per column, or (K * F,) per member): the bias of
// the linear map that produces x, added here rather than in a separate pass over the rows.
int Forward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float *beta = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t rows = shapes[0][0], width = shapes[0][1];
  const int64_t members = Members(shapes[2][0], width, rows);
  if (members == 0 || shapes[1][0] != shapes[2][0] || shapes[3][0] != shapes[2][0]) return 1;
  const int64_t per_member = rows / members;
  const int threads = Threads();
  std::vector<float> buffers(static_cast<size_t>(threads) * width);
  float *scratch = buffers.data();
  ParallelBlocks(rows, threads, [=](int64_t first, int64_t last, int64_t, int t) {
    float *__restrict__ z = scratch + static_cast<size_t>(t) * width;
    for (int64_t m = first; m < last; ++m) {
      const int64_t offset = MemberOffset(m, per_member, members, width);
      const float *__restrict__ bs = bias + offset;
      const float *__restrict__ gm = gamma + offset;
      const float *__restrict__ bt = beta + offset;
      const float *__restrict__ xr = x + m * width;
      float *__restrict__ yr = y + m * width;
      for (int64_t f = 0; f < width; ++f) z[f] = xr[f] + bs[f];
      const RowStats s = Stats(z, width);
      const float mean = s.mean, inv_std = s.inv_std;
      for (int64_t f = 0; f < width; ++f) yr[f] = (z[f] - mean) * inv_std * gm[f] + bt[f];
    }
  });
  return 0;
}

int Backward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float *dy = static_cast<const float *>(params[5]);  // params[4] is the forward output
  float *dx = static_cast<float *>(params[6]);
  float *dbias = static_cast<float *>(params[7]);
  float *dgamma = static_cast<float *>(params[8]);
  float *dbeta = static_cast<float *>(params[9]);
  const int64_t rows = shapes[0][0], width = shapes[0][1];
  if (shapes[1][0] != width || shapes[2][0] != width) return 1;  // one member only
  const int threads = Threads();
  const int64_t blocks = Blocks(rows);
  // dgamma, dbeta, dbias per block
  std::vector<float> block_sums(static_cast<size_t>(std::max<int64_t>(1, blocks)) * 3 * width, 0.f);
  std::vector<float> buffers(static_cast<size_t>(threads) * 2 * width);  // dn, n per thread
  float *sums = block_sums.data();
  float *scratch = buffers.data();
  // captured by value with __restrict__ locals: a captured reference blocks vectorisation
  ParallelBlocks(rows, threads, [=](int64_t first, int64_t last, int64_t block, int t) {
    float *__restrict__ dg = sums + static_cast<size_t>(block) * 3 * width;
    float *__restrict__ db = dg + width;
    float *__restrict__ dbs = db + width;
    float *__restrict__ dn = scratch + static_cast<size_t>(t) * 2 * width;
    float *__restrict__ n = dn + width;
    const float *__restrict__ bs = bias;
    const float *__restrict__ gm = gamma;
    for (int64_t m = first; m < last; ++m) {
      const float *__restrict__ xr = x + m * width;
      const float *__restrict__ dyr = dy + m * width;
      float *__restrict__ dxr = dx + m * width;
      for (int64_t f = 0; f < width; ++f) n[f] = xr[f] + bs[f];
      const RowStats s = Stats(n, width);
      const float mean = s.mean, inv_std = s.inv_std;
      for (int64_t f = 0; f < width; ++f) n[f] = (n[f] - mean) * inv_std;
      for (int64_t f = 0; f < width; ++f) dn[f] = dyr[f];  // (a separate copy lets the next loop vectorise)
      const DnMeans means = AccumulateRow(dn, n, gm, dg, db, width);
      for (int64_t f = 0; f < width; ++f) dxr[f] = inv_std * (dn[f] - means.dn - n[f] * means.dn_n);
      for (int64_t f = 0; f < width; ++f) dbs[f] += dxr[f];
    }
  });
  float *outputs[] = {dgamma, dbeta, dbias};
  SumBlocks(block_sums, blocks, 3, width, outputs);
  return 0;
}

// The Matformer attention gate: out = u * sigmoid(LN(a) * gamma + beta) on each edge-head row m
// with i = ri[m], j = rj[m], r = re[m] (atom i, atom j, bond length):
//   logits a = (q_i * k_i | q_i * k_j | q_i * e_r)    from per-atom q, k and per-length e (C wide)
//   update u = ui_i + uj_j + ue_r                      from three (., 3C) tables
// Neither a nor u is ever stored: each row builds both in scratch space.
struct GateInputs {
  const float *q, *k, *e;
  const float *gamma, *beta;
  const float *ui, *uj, *ue;
  const int32_t *ri, *rj, *re;
  int64_t rows, c, width;
};

GateInputs ReadGateInputs(void **params, int64_t **shapes) {
  GateInputs in;
  in.q = static_cast<const float *>(params[0]);
  in.k = static_cast<const float *>(params[1]);
  in.e = static_cast<const float *>(params[2]);
  in.gamma = static_cast<const float *>(params[3]);
  in.beta = static_cast<const float *>(params[4]);
  in.ui = static_cast<const float *>(params[5]);
  in.uj = static_cast<const float *>(params[6]);
  in.ue = static_cast<const float *>(params[7]);
  in.ri = static_cast<const int32_t *>(params[8]);
  in.rj = static_cast<const int32_t *>(params[9]);
  in.re = static_cast<const int32_t *>(params[10]);
  in.rows = shapes[8][0];
  in.c = shapes[0][1];
  in.width = 3 * in.c;
  return in;
}

// The rows of edge-head row m in the per-atom and per-length tables.
struct GateRows {
  const float *q, *ki, *kj, *e;
  const float *ui, *uj, *ue;
};

GateRows RowsOf(const GateInputs &in, int64_t m) {
  const int64_t i = in.ri[m], j = in.rj[m], r = in.re[m];
  return {in.q + i * in.c,      in.k + i * in.c,      in.k + j * in.c,     in.e + r * in.c,
          in.ui + i * in.width, in.uj + j * in.width, in.ue + r * in.width};
}

// Row m's update into u (width floats).
void GatherUpdate(const GateRows &rows, int64_t width, float *__restrict__ u) {
  const float *__restrict__ ui = rows.ui;
  const float *__restrict__ uj = rows.uj;
  const float *__restrict__ ue = rows.ue;
  for (int64_t k = 0; k < width; ++k) u[k] = ui[k] + uj[k] + ue[k];
}

// Row m's normalised logits into n (3C floats); returns 1/sqrt(var + eps).
float NormalisedLogits(const GateRows &rows, int64_t c, float *__restrict__ n) {
  const float *__restrict__ q = rows.q;
  const float *__restrict__ ki = rows.ki;
  const float *__restrict__ kj = rows.kj;
  const float *__restrict__ e = rows.e;
  for (int64_t f = 0; f < c; ++f) {
    n[f] = q[f] * ki[f];
    n[c + f] = q[f] * kj[f];
    n[2 * c + f] = q[f] * e[f];
  }
  const RowStats s = Stats(n, 3 * c);
  const float mean = s.mean, inv_std = s.inv_std;
  for (int64_t k = 0; k < 3 * c; ++k) n[k] = (n[k] - mean) * inv_std;
  return inv_std;
}

// Row m's update into u and normalised logits into n; its table rows are returned and
// 1/sqrt(var + eps) of its logits stored in inv_std.
GateRows GateRow(const GateInputs &in, int64_t m, float *__restrict__ u, float *__restrict__ n, float *inv_std) {
  const GateRows rows = RowsOf(in, m);
  GatherUpdate(rows, in.width, u);
  *inv_std = NormalisedLogits(rows, in.c, n);
  return rows;
}

// Row m's gated output u * sigmoid(n * gamma + beta) into out (3C floats), gamma and beta being
// the row's member's; u and n are 3C floats of scratch.
void GatedRow(const GateInputs &in, int64_t m, const float *__restrict__ gm, const float *__restrict__ bt,
              float *__restrict__ u, float *__restrict__ n, float *__restrict__ out) {
  float inv_std;
  GateRow(in, m, u, n, &inv_std);
  for (int64_t k = 0; k < in.width; ++k) out[k] = u[k] / (1.f + std::exp(-(n[k] * gm[k] + bt[k])));
}

int GateForward(void **params, int64_t **shapes) {
  const GateInputs in = ReadGateInputs(params, shapes);
  float *out = static_cast<float *>(params[11]);
  const int64_t width = in.width;
  const int64_t members = Members(shapes[3][0], width, in.rows);
  if (members == 0 || shapes[4][0] != shapes[3][0]) return 1;
  const int64_t per_member = in.rows / members;
  const int threads = Threads();
  std::vector<float> buffers(static_cast<size_t>(threads) * 2 * width);
  float *scratch = buffers.data();
  ParallelBlocks(in.rows, threads, [=](int64_t first, int64_t last, int64_t, int t) {
    float *__restrict__ u = scratch + static_cast<size_t>(t) * 2 * width;
    float *__restrict__ n = u + width;
    for (int64_t m = first; m < last; ++m) {
      const int64_t offset = MemberOffset(m, per_member, members, width);
      GatedRow(in, m, in.gamma + offset, in.beta + offset, u, n, out + m * width);
    }
  });
  return 0;
}

// Adds the rows of values (M, width) onto out: out[index[m]] += weight[m] * values[m] (weight 1 where
// none is given), m in order. Threads split the columns, so no two write
// the same element and every element sums its terms in row order whatever the thread count.
void AddRows(const float *values, const float *weight, const int32_t *index, float *out, int64_t rows,
             int64_t width) {
  constexpr int64_t kBlock = 16;  // one 64-byte cache line of floats per block
  const int64_t blocks = (width + kBlock - 1) / kBlock;
  const int64_t wanted = std::min<int64_t>({Threads(), blocks, std::max<int64_t>(1, rows / kRowsPerBlock)});
  const int workers = static_cast<int>(std::max<int64_t>(1, wanted));
  auto body = [=](int t) {
    const int64_t first = std::min(width, blocks * t / workers * kBlock);
    const int64_t last = std::min(width, blocks * (t + 1) / workers * kBlock);
    for (int64_t m = 0; m < rows; ++m) {
      const float *__restrict__ v = values + m * width;
      float *__restrict__ o = out + static_cast<int64_t>(index[m]) * width;
      if (weight == nullptr) {
        for (int64_t f = first; f < last; ++f) o[f] += v[f];
      } else {
        const float w = weight[m];
        for (int64_t f = first; f < last; ++f) o[f] += w * v[f];
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < workers; ++t) pool.emplace_back(body, t);
  body(0);
  for (auto &thread : pool) thread.join();
}

// Row scatter-add, out = zeros(T, W) plus AddRows: the sum of messages over incoming edges, each
// counted with its multiplicity.
int ScatterRows(const float *values, const float *weight, const int32_t *index, float *out, int64_t rows,
                int64_t width, int64_t targets) {
  std::fill(out, out + targets * width, 0.f);
  AddRows(values, weight, index, out, rows, width);
  return 0;
}

// The gradient of a weighted scatter-add: out[m] = weight[m] * dout[index[m]] (M, W), one pass
// instead of a row gather and a product.
int GatherScaleRows(const float *dout, const float *weight, const int32_t *index, float *out, int64_t rows,
                    int64_t width) {
  ParallelBlocks(rows, Threads(), [=](int64_t first, int64_t last, int64_t, int) {
    for (int64_t m = first; m < last; ++m) {
      const float *__restrict__ d = dout + static_cast<int64_t>(index[m]) * width;
      float *__restrict__ o = out + m * width;
      const float w = weight[m];
      for (int64_t f = 0; f < width; ++f) o[f] = d[f] * w;
    }
  });
  return 0;
}

// Per-row gradients of the gate in five planes of rows: gq, gki, gkj, ge (C wide), du (3C wide).
struct RowGradients {
  float *gq, *gki, *gkj, *ge, *du;

  // The planes of `rows` rows laid end to end from `base` (7C floats per row in all).
  static RowGradients At(float *base, int64_t rows, int64_t c) {
    return {base, base + rows * c, base + 2 * rows * c, base + 3 * rows * c, base + 4 * rows * c};
  }
};
constexpr int64_t kGradWidths = 7;  // floats of row gradients per row, in units of C

// The gate's gradients on edge-head row m, written to row r of the planes g:
//   gq = da_0 * k_i + da_1 * k_j + da_2 * e_r  (onto q_i),  gki = da_0 * q_i (onto k_i),
//   gkj = da_1 * q_i (onto k_j),  ge = da_2 * q_i (onto e_r),  du (onto ui_i, uj_j, ue_r).
// Adds the row's terms to dgamma and dbeta in dg and db; dn, n, u are 3C floats of scratch.
void GateRowGradients(const GateInputs &in, int64_t m, const float *__restrict__ doutr, float *__restrict__ dg,
                      float *__restrict__ db, float *__restrict__ dn, float *__restrict__ n, float *__restrict__ u,
                      const RowGradients &g, int64_t r) {
  const int64_t c = in.c, width = in.width;
  const float *__restrict__ gm = in.gamma;
  const float *__restrict__ bt = in.beta;
  float inv_std;
  const GateRows rows = GateRow(in, m, u, n, &inv_std);
  float *__restrict__ dur = g.du + r * width;
  // short loops over the cached row: GCC vectorises each, but not one loop doing it all
  for (int64_t k = 0; k < width; ++k) dur[k] = n[k] * gm[k] + bt[k];
  for (int64_t k = 0; k < width; ++k) dur[k] = 1.f / (1.f + std::exp(-dur[k]));  // the gate
  for (int64_t k = 0; k < width; ++k) {
    const float gate = dur[k];
    dur[k] = doutr[k] * gate;                       // d/du
    dn[k] = doutr[k] * u[k] * gate * (1.f - gate);  // dz, through the sigmoid
  }
  const DnMeans means = AccumulateRow(dn, n, gm, dg, db, width);
  for (int64_t k = 0; k < width; ++k) dn[k] = inv_std * (dn[k] - means.dn - n[k] * means.dn_n);  // da
  // through the products of the logits
  const float *__restrict__ q = rows.q;
  const float *__restrict__ ki = rows.ki;
  const float *__restrict__ kj = rows.kj;
  const float *__restrict__ e = rows.e;
  const float *__restrict__ d0 = dn;
  const float *__restrict__ d1 = dn + c;
  const float *__restrict__ d2 = dn + 2 * c;
  float *__restrict__ gq = g.gq + r * c;
  float *__restrict__ gki = g.gki + r * c;
  float *__restrict__ gkj = g.gkj + r * c;
  float *__restrict__ ge = g.ge + r * c;
  for (int64_t f = 0; f < c; ++f) gq[f] = d0[f] * ki[f] + d1[f] * kj[f] + d2[f] * e[f];
  for (int64_t f = 0; f < c; ++f) gki[f] = d0[f] * q[f];
  for (int64_t f = 0; f < c; ++f) gkj[f] = d1[f] * q[f];
  for (int64_t f = 0; f < c; ++f) ge[f] = d2[f] * q[f];
}

// The gate's gradients on its tables: dq (., C), dki and dkj (k's shape: k_i's and k_j's terms
// apart, as two scatters gave them), de, and dui, duj, due (the update tables' shapes).
struct GateTables {
  float *dq, *dki, *dkj, *de, *dui, *duj, *due;
};

// Adds the row gradients g of rows [first, first + count) onto the tables.
void AddToTables(const GateInputs &in, const RowGradients &g, int64_t first, int64_t count, const GateTables &t) {
  const int64_t c = in.c;
  const int32_t *ri = in.ri + first, *rj = in.rj + first, *re = in.re + first;
  AddRows(g.gq, nullptr, ri, t.dq, count, c);
  AddRows(g.gki, nullptr, ri, t.dki, count, c);
  AddRows(g.gkj, nullptr, rj, t.dkj, count, c);
  AddRows(g.ge, nullptr, re, t.de, count, c);
  AddRows(g.du, nullptr, ri, t.dui, count, in.width);
  AddRows(g.du, nullptr, rj, t.duj, count, in.width);
  AddRows(g.du, nullptr, re, t.due, count, in.width);
}

// The row gradients of all rows when more than one thread computes them (7C floats a row: about
// 50 MB for 64 mp2018 crystals), kept between calls: a fresh buffer's pages were faulted in on every
// call, which made the kernel about 1.6 times slower on two threads.
std::mutex g_row_buffer_mutex;
std::vector<float> g_row_buffer;

// Every table element sums its rows' terms in row order, and dgamma/dbeta sum fixed blocks of rows
// in order, so the gradients are the same bits whatever the thread count. On one thread the row
// gradients pass through a small buffer that stays in cache; on more, all rows are computed in
// parallel first, then added with the columns split between threads.
int GateBackward(void **params, int64_t **shapes) {
  const GateInputs in = ReadGateInputs(params, shapes);
  const float *dout = static_cast<const float *>(params[12]);  // params[11] is the forward output
  const GateTables tables{static_cast<float *>(params[13]), static_cast<float *>(params[14]),
                          static_cast<float *>(params[15]), static_cast<float *>(params[16]),
                          static_cast<float *>(params[19]), static_cast<float *>(params[20]),
                          static_cast<float *>(params[21])};
  float *dgamma = static_cast<float *>(params[17]);
  float *dbeta = static_cast<float *>(params[18]);
  const int64_t c = in.c, width = in.width, stride = kGradWidths * c;
  if (shapes[3][0] != width || shapes[4][0] != width) return 1;  // one member only
  const int64_t sizes[] = {shapes[0][0] * c, shapes[1][0] * c, shapes[1][0] * c, shapes[2][0] * c,
                           shapes[5][0] * width, shapes[6][0] * width, shapes[7][0] * width};
  float *outs[] = {tables.dq, tables.dki, tables.dkj, tables.de, tables.dui, tables.duj, tables.due};
  for (int i = 0; i < 7; ++i) std::fill(outs[i], outs[i] + sizes[i], 0.f);
  const int64_t blocks = Blocks(in.rows);
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(Threads(), blocks)));
  // dgamma, dbeta per block
  std::vector<float> block_sums(static_cast<size_t>(std::max<int64_t>(1, blocks)) * 2 * width, 0.f);
  std::vector<float> buffers(static_cast<size_t>(workers) * 3 * width);  // dn, n, u per thread
  float *sums = block_sums.data();
  float *scratch = buffers.data();
  // row m's gradients to row r of the planes g, its dgamma/dbeta terms to its block's sums
  auto row_gradients = [=](int64_t m, int64_t block, int t, const RowGradients &g, int64_t r) {
    float *dg = sums + static_cast<size_t>(block) * 2 * width;
    float *dn = scratch + static_cast<size_t>(t) * 3 * width;
    GateRowGradients(in, m, dout + m * width, dg, dg + width, dn, dn + width, dn + 2 * width, g, r);
  };
  if (workers == 1) {
    constexpr int64_t kChunk = 64;  // rows per pass through the buffer: 64 x 7C floats stay in L2
    std::vector<float> buffer(static_cast<size_t>(kChunk * stride));
    const RowGradients chunk = RowGradients::At(buffer.data(), kChunk, c);
    for (int64_t first = 0; first < in.rows; first += kChunk) {
      const int64_t count = std::min(kChunk, in.rows - first);
      for (int64_t m = first; m < first + count; ++m) row_gradients(m, m / kRowsPerBlock, 0, chunk, m - first);
      AddToTables(in, chunk, first, count, tables);
    }
  } else {
    const std::lock_guard<std::mutex> lock(g_row_buffer_mutex);
    if (g_row_buffer.size() < static_cast<size_t>(in.rows * stride)) g_row_buffer.resize(in.rows * stride);
    const RowGradients all = RowGradients::At(g_row_buffer.data(), in.rows, c);
    ParallelBlocks(in.rows, workers, [=](int64_t first, int64_t last, int64_t block, int t) {
      for (int64_t m = first; m < last; ++m) row_gradients(m, block, t, all, m);
    });
    AddToTables(in, all, 0, in.rows, tables);
  }
  float *outputs[] = {dgamma, dbeta};
  SumBlocks(block_sums, blocks, 2, width, outputs);
  return 0;
}

// Training-mode BatchNorm over the rows of x (N, C): y = (x - mean) / sqrt(var + eps) * gamma + beta
// with the batch's column mean and biased variance, which are output too (for the moving
// statistics; they carry no gradient). One thread: N x C is a few hundred thousand floats.
int BatchNormForward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  float *mean = static_cast<float *>(params[4]);
  float *var = static_cast<float *>(params[5]);
  const int64_t rows = shapes[0][0], width = shapes[0][1];
  if (shapes[1][0] != width || shapes[2][0] != width || rows == 0) return 1;
  std::vector<float> inv_std(static_cast<size_t>(width));
  std::fill(mean, mean + width, 0.f);
  std::fill(var, var + width, 0.f);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t f = 0; f < width; ++f) mean[f] += x[m * width + f];
  }
  for (int64_t f = 0; f < width; ++f) mean[f] /= static_cast<float>(rows);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t f = 0; f < width; ++f) {
      const float d = x[m * width + f] - mean[f];
      var[f] += d * d;
    }
  }
  for (int64_t f = 0; f < width; ++f) {
    var[f] /= static_cast<float>(rows);
    inv_std[f] = 1.f / std::sqrt(var[f] + kEps);
  }
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t f = 0; f < width; ++f) {
      y[m * width + f] = (x[m * width + f] - mean[f]) * inv_std[f] * gamma[f] + beta[f];
    }
  }
  return 0;
}

// Its backward for dy: dbeta = sum dy, dgamma = sum dy * n, dx = gamma / sigma * (dy - mean(dy) - n *
// mean(dy * n)) with n the normalised x, all sums over the rows (batch statistics differentiated).
int BatchNormBackward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *mean = static_cast<const float *>(params[4]);  // params[3] is y
  const float *var = static_cast<const float *>(params[5]);
  const float *dy = static_cast<const float *>(params[6]);  // params[7], params[8]: d mean, d var (none)
  float *dx = static_cast<float *>(params[9]);
  float *dgamma = static_cast<float *>(params[10]);
  float *dbeta = static_cast<float *>(params[11]);
  const int64_t rows = shapes[0][0], width = shapes[0][1];
  if (shapes[1][0] != width || rows == 0) return 1;
  std::vector<float> inv_std(static_cast<size_t>(width));
  for (int64_t f = 0; f < width; ++f) inv_std[f] = 1.f / std::sqrt(var[f] + kEps);
  std::fill(dgamma, dgamma + width, 0.f);
  std::fill(dbeta, dbeta + width, 0.f);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t f = 0; f < width; ++f) {
      const float g = dy[m * width + f];
      dbeta[f] += g;
      dgamma[f] += g * (x[m * width + f] - mean[f]) * inv_std[f];
    }
  }
  const float scale = 1.f / static_cast<float>(rows);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t f = 0; f < width; ++f) {
      const float n = (x[m * width + f] - mean[f]) * inv_std[f];
      dx[m * width + f] = gamma[f] * inv_std[f] * (dy[m * width + f] - (dbeta[f] + n * dgamma[f]) * scale);
    }
  }
  return 0;
}

// The whole message pass of a Matformer layer for K stacked members, inference only:
//   out[k, i_m] += w_m * LN_C(W_k^T g_m + b_k) * gamma_k + beta_k   over every edge-head row m,
//   g_m = the attention gate's row m (GateForward), member k's tables and parameters.
// The gated rows and the messages live in a small tile of rows that stays in cache: neither the
// (K*M, 3C) gated tensor, nor the (K*M, C) messages, nor K copies of the row indices are ever
// stored. Threads take whole members (each writes its own block of output rows); with fewer
// members than threads, a member's rows are cut into slices, all but the first summed into
// private buffers that are added in slice order.
struct MessageInputs {
  GateInputs gate;                             // row indices are one member's, (M,)
  const float *w, *bias, *norm_gamma, *norm_beta;  // (K*3C, C), (K*C,) x 3
  const float *edge_weight;                    // (M / H,)
  int64_t members, heads, atom_rows, length_rows;  // per member: q/k/ui/uj rows, e/ue rows
};

constexpr int64_t kTile = 32;   // rows gated, multiplied and normalised together
// The tile product's register blocking, by the vector registers the build targets: kProductRows
// rows of g times kProductVectors vectors of columns held in registers, plus kProductVectors
// vectors of w and a broadcast of g. Blocks larger than the register file spill to the stack: the
// AVX-512 blocking (24 accumulators of 16 floats) built for AVX2 (16 registers of 8) ran the
// message pass 6 times slower on an AMD EPYC (Zen 3).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;         // floats per vector (one zmm register)
constexpr int kProductVectors = 4;     // 6 x 4 accumulators, 4 of w and a broadcast: 29 of 32 registers
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;          // one ymm register
constexpr int kProductVectors = 2;     // 6 x 2 accumulators, 2 of w and a broadcast: 15 of 16 registers
#else
constexpr int64_t kLanes = 4;          // one xmm register
constexpr int kProductVectors = 2;     // 15 of 16 registers
#endif
constexpr int kProductRows = 6;
// Unaligned (aligned to a float) and allowed to alias float data, so that vectors are loaded from and
// stored to the rows directly: memcpy through a stack copy made GCC keep the accumulators in memory and
// split each load into two halves that the full-width reload could not forward.
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float)), may_alias));

inline Vec LoadVec(const float *p) { return *reinterpret_cast<const Vec *>(p); }
inline void StoreVec(float *p, Vec v) { *reinterpret_cast<Vec *>(p) = v; }

// y (rows, C) = g (rows, 3C) @ w (3C, C) + bias (C,), for rows <= kTile: kRows rows at a time and
// kVectors vectors of columns, so that each row of w loaded serves kRows rows of g from registers
// (w, 48 KB for C = 64, comes from L2: the fewer times it is read, the better).
template <int kRows, int kVectors>
void TileProduct(const float *__restrict__ g, const float *__restrict__ w, const float *__restrict__ bias,
                 float *__restrict__ y, int64_t rows, int64_t depth, int64_t c, int64_t column) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t count = std::min<int64_t>(kRows, rows - r0);
    Vec acc[kRows][kVectors];
    const float *gr[kRows];
    for (int r = 0; r < kRows; ++r) {
      gr[r] = g + std::min<int64_t>(r0 + r, rows - 1) * depth;  // rows past the end repeat the last
      for (int v = 0; v < kVectors; ++v) acc[r][v] = LoadVec(bias + column + v * kLanes);
    }
    for (int64_t i = 0; i < depth; ++i) {
      Vec wv[kVectors];
      for (int v = 0; v < kVectors; ++v) wv[v] = LoadVec(w + i * c + column + v * kLanes);
      for (int r = 0; r < kRows; ++r) {
        const float a = gr[r][i];
        for (int v = 0; v < kVectors; ++v) acc[r][v] += a * wv[v];
      }
    }
    for (int r = 0; r < count; ++r)
      for (int v = 0; v < kVectors; ++v) StoreVec(y + (r0 + r) * c + column + v * kLanes, acc[r][v]);
  }
}

// y (rows, C) = g (rows, 3C) @ w (3C, C) + bias: blocks of kProductVectors vectors of columns,
// then single vectors, then the columns left over (C not a multiple of kLanes) one by one.
void TileMatMul(const float *g, const float *w, const float *bias, float *y, int64_t rows, int64_t c) {
  const int64_t depth = 3 * c;
  int64_t column = 0;
  for (; column + kProductVectors * kLanes <= c; column += kProductVectors * kLanes)
    TileProduct<kProductRows, kProductVectors>(g, w, bias, y, rows, depth, c, column);
  for (; column + kLanes <= c; column += kLanes) TileProduct<kProductRows, 1>(g, w, bias, y, rows, depth, c, column);
  for (; column < c; ++column) {
    for (int64_t r = 0; r < rows; ++r) {
      float sum = bias[column];
      for (int64_t i = 0; i < depth; ++i) sum += g[r * depth + i] * w[i * c + column];
      y[r * c + column] = sum;
    }
  }
}

// Rows [first, last) of member `member` added into out (atom_rows, C), that member's block.
void MessageRows(const MessageInputs &in, int64_t member, int64_t first, int64_t last, float *__restrict__ out,
                 float *__restrict__ scratch) {
  const GateInputs &g = in.gate;
  const int64_t c = g.c, width = g.width;
  GateInputs mine = g;  // the member's tables
  mine.q = g.q + member * in.atom_rows * c;
  mine.k = g.k + member * in.atom_rows * c;
  mine.e = g.e + member * in.length_rows * c;
  mine.ui = g.ui + member * in.atom_rows * width;
  mine.uj = g.uj + member * in.atom_rows * width;
  mine.ue = g.ue + member * in.length_rows * width;
  const float *__restrict__ gm = g.gamma + member * width;
  const float *__restrict__ bt = g.beta + member * width;
  const float *w = in.w + member * width * c;
  const float *bias = in.bias + member * c;
  const float *__restrict__ ngm = in.norm_gamma + member * c;
  const float *__restrict__ nbt = in.norm_beta + member * c;
  float *__restrict__ gated = scratch;           // (kTile, 3C)
  float *__restrict__ product = gated + kTile * width;  // (kTile, C)
  float *__restrict__ u = product + kTile * c;   // (3C,)
  float *__restrict__ n = u + width;             // (3C,)
  for (int64_t start = first; start < last; start += kTile) {
    const int64_t rows = std::min(kTile, last - start);
    for (int64_t r = 0; r < rows; ++r) GatedRow(mine, start + r, gm, bt, u, n, gated + r * width);
    TileMatMul(gated, w, bias, product, rows, c);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t m = start + r;
      float *__restrict__ z = product + r * c;
      const RowStats s = Stats(z, c);
      const float mean = s.mean, inv_std = s.inv_std, weight = in.edge_weight[m / in.heads];
      float *__restrict__ o = out + static_cast<int64_t>(g.ri[m]) * c;
      for (int64_t f = 0; f < c; ++f) o[f] += weight * ((z[f] - mean) * inv_std * ngm[f] + nbt[f]);
    }
  }
}

int MessageForward(void **params, int64_t **shapes) {
  MessageInputs in;
  in.gate = ReadGateInputs(params, shapes);  // q k e gamma beta ui uj ue at 0-7
  in.gate.ri = static_cast<const int32_t *>(params[13]);
  in.gate.rj = static_cast<const int32_t *>(params[14]);
  in.gate.re = static_cast<const int32_t *>(params[15]);
  in.gate.rows = shapes[13][0];
  in.w = static_cast<const float *>(params[8]);
  in.bias = static_cast<const float *>(params[9]);
  in.norm_gamma = static_cast<const float *>(params[10]);
  in.norm_beta = static_cast<const float *>(params[11]);
  in.edge_weight = static_cast<const float *>(params[12]);
  float *out = static_cast<float *>(params[16]);
  const int64_t c = in.gate.c, width = in.gate.width, rows = in.gate.rows, edges = shapes[12][0];
  const int64_t members = Members(shapes[3][0], width, shapes[0][0]);
  if (members == 0 || shapes[4][0] != shapes[3][0] || shapes[8][0] != members * width || shapes[8][1] != c ||
      shapes[9][0] != members * c || shapes[10][0] != members * c || shapes[11][0] != members * c ||
      shapes[2][0] % members != 0 || edges <= 0 || rows % edges != 0 || shapes[14][0] != rows ||
      shapes[15][0] != rows) {
    return 1;
  }
  in.members = members;
  in.heads = rows / edges;
  in.atom_rows = shapes[0][0] / members;
  in.length_rows = shapes[2][0] / members;
  std::fill(out, out + members * in.atom_rows * c, 0.f);
  const int threads = Threads();
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((threads + members - 1) / members,
                                                               (rows + kTile - 1) / kTile));
  const int64_t units = members * slices;
  const int workers = static_cast<int>(std::min<int64_t>(threads, units));
  const int64_t block = in.atom_rows * c;
  const int64_t scratch_floats = kTile * (width + c) + 2 * width;
  std::vector<float> scratch(static_cast<size_t>(workers) * scratch_floats);
  std::vector<float> partial(static_cast<size_t>(members * (slices - 1) * block), 0.f);
  float *scratch_data = scratch.data();
  float *partial_data = partial.data();
  auto run = [=, &in](int t) {
    for (int64_t unit = units * t / workers; unit < units * (t + 1) / workers; ++unit) {
      const int64_t member = unit / slices, slice = unit % slices;
      float *target = slice == 0 ? out + member * block : partial_data + (member * (slices - 1) + slice - 1) * block;
      MessageRows(in, member, rows * slice / slices, rows * (slice + 1) / slices, target,
                  scratch_data + static_cast<size_t>(t) * scratch_floats);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < workers; ++t) pool.emplace_back(run, t);
  run(0);
  for (auto &thread : pool) thread.join();
  for (int64_t member = 0; member < members; ++member) {
    for (int64_t slice = 1; slice < slices; ++slice) {
      const float *__restrict__ p = partial_data + (member * (slices - 1) + slice - 1) * block;
      float *__restrict__ o = out + member * block;
      for (int64_t f = 0; f < block; ++f) o[f] += p[f];
    }
  }
  return 0;
}

std::vector<int64_t> ShapeOf(int *ndims, int64_t **shapes, int i) {
  return std::vector<int64_t>(shapes[i], shapes[i] + ndims[i]);
}
}  // namespace

class AotExtra;

extern "C" {
void CrystalpropSetThreads(int threads) { g_threads.store(std::max(1, threads), std::memory_order_relaxed); }

int RowNorm(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Forward(params, shapes);
}
int RowNormGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Backward(params, shapes);
}
int AttentionGate(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return GateForward(params, shapes);
}
int AttentionGateGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return GateBackward(params, shapes);
}
int MessagePass(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return MessageForward(params, shapes);
}
int ScatterRowsAdd(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  // values (M, W), index (M,), like (T, W) -> out (T, W); like only gives the output's shape
  return ScatterRows(static_cast<const float *>(params[0]), nullptr, static_cast<const int32_t *>(params[1]),
                     static_cast<float *>(params[3]), shapes[0][0], shapes[0][1], shapes[2][0]);
}
int GatherScaleRowsOp(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  // dout (T, W), weight (M,), index (M,) -> out (M, W)
  return GatherScaleRows(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                         static_cast<const int32_t *>(params[2]), static_cast<float *>(params[3]), shapes[2][0],
                         shapes[0][1]);
}
int BatchNormTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return BatchNormForward(params, shapes);
}
int BatchNormTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return BatchNormBackward(params, shapes);
}
int WeightedScatterRowsAdd(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  // values (M, W), weight (M,), index (M,), like (T, W) -> out (T, W)
  return ScatterRows(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                     static_cast<const int32_t *>(params[2]), static_cast<float *>(params[4]), shapes[0][0],
                     shapes[0][1], shapes[3][0]);
}
}

// Output shapes for dynamic-shape graphs: each output like the input it belongs to.
extern "C" std::vector<int64_t> RowNormInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return ShapeOf(ndims, shapes, 0);
}
extern "C" std::vector<std::vector<int64_t>> RowNormGradInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return {ShapeOf(ndims, shapes, 0), ShapeOf(ndims, shapes, 1), ShapeOf(ndims, shapes, 2),
          ShapeOf(ndims, shapes, 3)};
}
extern "C" std::vector<int64_t> AttentionGateInferShape(int *, int64_t **shapes, AotExtra *) {
  return {shapes[8][0], shapes[5][1]};  // (rows, 3C)
}
extern "C" std::vector<std::vector<int64_t>> AttentionGateGradInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  // dq, dki, dkj, de, dgamma, dbeta, dui, duj, due: each like the input it is the gradient of
  const int like[] = {0, 1, 1, 2, 3, 4, 5, 6, 7};
  std::vector<std::vector<int64_t>> out;
  for (int i : like) out.push_back(ShapeOf(ndims, shapes, i));
  return out;
}
extern "C" std::vector<std::vector<int64_t>> BatchNormTrainInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return {ShapeOf(ndims, shapes, 0), ShapeOf(ndims, shapes, 1), ShapeOf(ndims, shapes, 1)};  // y, mean, var
}
extern "C" std::vector<std::vector<int64_t>> BatchNormTrainGradInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return {ShapeOf(ndims, shapes, 0), ShapeOf(ndims, shapes, 1), ShapeOf(ndims, shapes, 2)};  // dx, dgamma, dbeta
}
extern "C" std::vector<int64_t> GatherScaleRowsOpInferShape(int *, int64_t **shapes, AotExtra *) {
  return {shapes[2][0], shapes[0][1]};  // (M, W)
}
extern "C" std::vector<int64_t> MessagePassInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return ShapeOf(ndims, shapes, 0);  // like q: (K * atoms * heads, C)
}
extern "C" std::vector<int64_t> ScatterRowsAddInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return ShapeOf(ndims, shapes, 2);
}
extern "C" std::vector<int64_t> WeightedScatterRowsAddInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return ShapeOf(ndims, shapes, 3);
}
