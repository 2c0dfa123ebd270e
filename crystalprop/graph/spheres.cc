// Periodic fixed-radius neighbour search: the numpy path of crystalprop/graph/spheres.py, in one pass.
//
// Every floating-point step is the one numpy takes there, in the same order (products of a row and
// a 3x3 matrix summed term by term, (x*x + y*y) + z*z for squared distances), and the build turns
// off contraction into fused multiply-adds, so that the pairs and the squared distances are equal
// to the last bit. Candidate centres come from a grid of bins over the centres; the exact test
// decides. The pairs come out in another order than numpy's, which the graph builder does not use.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// rows (n x 3) times matrix (3 x 3), each entry (r0*m0j + r1*m1j) + r2*m2j, as numpy's sum over axis 1
inline void product(const double* row, const double* m, double* out) {
  for (int j = 0; j < 3; ++j) out[j] = (row[0] * m[j] + row[1] * m[3 + j]) + row[2] * m[6 + j];
}

}  // namespace

extern "C" {

// Every atom image within the search radius of each centre: returns how many pairs there are and
// writes the first ``capacity`` of them (centre index, atom index, integer image offset relative
// to the atom's given position, squared distance). ``ranges``: per cell vector, the first and
// one-past-last image index; ``limit``: the squared radius plus tolerance, a pair is kept when
// its squared distance is below it; ``low``/``high``: the centres' box grown by radius and
// tolerance, images outside it are skipped (as numpy's path does: its bounds are exclusive).
int64_t CrystalpropSpheres(const double* lattice, const double* inv, const double* cart, int64_t n_atoms,
                           const double* centres, int64_t n_centres, const int64_t* ranges, const double* low,
                           const double* high, double limit, int64_t capacity, int64_t* centre_out,
                           int64_t* atom_out, int64_t* offset_out, double* squared_out) {
  if (n_centres == 0 || n_atoms == 0) return 0;
  std::vector<double> floor_part(3 * n_atoms), in_cell(3 * n_atoms);
  for (int64_t i = 0; i < n_atoms; ++i) {
    double frac[3], wrapped[3];
    product(cart + 3 * i, inv, frac);
    for (int j = 0; j < 3; ++j) {
      wrapped[j] = frac[j] - std::floor(frac[j]);
      floor_part[3 * i + j] = frac[j] - wrapped[j];
    }
    product(wrapped, lattice, &in_cell[3 * i]);
  }

  // bins over the centres, at least as wide as the radius: a pair's bins differ by one at most
  double lo[3], hi[3];
  for (int a = 0; a < 3; ++a) {
    lo[a] = hi[a] = centres[a];
    for (int64_t c = 1; c < n_centres; ++c) {
      lo[a] = std::min(lo[a], centres[3 * c + a]);
      hi[a] = std::max(hi[a], centres[3 * c + a]);
    }
  }
  double width = std::sqrt(limit) * 1.001 + 1e-9;
  for (int a = 0; a < 3; ++a) width = std::max(width, (hi[a] - lo[a]) / 100.0);
  int64_t dims[3];
  for (int a = 0; a < 3; ++a) dims[a] = static_cast<int64_t>(std::floor((hi[a] - lo[a]) / width)) + 1;
  auto bin_of = [&](const double* p, int64_t* k) {
    for (int a = 0; a < 3; ++a) k[a] = static_cast<int64_t>(std::floor((p[a] - lo[a]) / width));
  };
  std::vector<int64_t> start(dims[0] * dims[1] * dims[2] + 1, 0), members(n_centres), bin(n_centres);
  for (int64_t c = 0; c < n_centres; ++c) {
    int64_t k[3];
    bin_of(centres + 3 * c, k);
    for (int a = 0; a < 3; ++a) k[a] = std::min(std::max(k[a], int64_t{0}), dims[a] - 1);
    bin[c] = (k[0] * dims[1] + k[1]) * dims[2] + k[2];
    ++start[bin[c] + 1];
  }
  for (size_t b = 1; b < start.size(); ++b) start[b] += start[b - 1];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t c = 0; c < n_centres; ++c) members[fill[bin[c]]++] = c;

  int64_t found = 0;
  for (int64_t s0 = ranges[0]; s0 < ranges[1]; ++s0) {
    for (int64_t s1 = ranges[2]; s1 < ranges[3]; ++s1) {
      for (int64_t s2 = ranges[4]; s2 < ranges[5]; ++s2) {
        const double shift[3] = {static_cast<double>(s0), static_cast<double>(s1), static_cast<double>(s2)};
        double origin[3];
        product(shift, lattice, origin);
        for (int64_t i = 0; i < n_atoms; ++i) {
          double p[3];
          bool inside = true;
          for (int a = 0; a < 3; ++a) {
            p[a] = origin[a] + in_cell[3 * i + a];
            inside = inside && p[a] > low[a] && p[a] < high[a];
          }
          if (!inside) continue;
          int64_t k[3];
          bin_of(p, k);
          for (int64_t b0 = std::max(k[0] - 1, int64_t{0}); b0 <= std::min(k[0] + 1, dims[0] - 1); ++b0) {
            for (int64_t b1 = std::max(k[1] - 1, int64_t{0}); b1 <= std::min(k[1] + 1, dims[1] - 1); ++b1) {
              for (int64_t b2 = std::max(k[2] - 1, int64_t{0}); b2 <= std::min(k[2] + 1, dims[2] - 1); ++b2) {
                const int64_t b = (b0 * dims[1] + b1) * dims[2] + b2;
                for (int64_t m = start[b]; m < start[b + 1]; ++m) {
                  const int64_t c = members[m];
                  const double* centre = centres + 3 * c;
                  const double dx = p[0] - centre[0], dy = p[1] - centre[1], dz = p[2] - centre[2];
                  double squared = dx * dx;
                  squared = squared + dy * dy;
                  squared = squared + dz * dz;
                  if (!(squared < limit)) continue;
                  if (found < capacity) {
                    centre_out[found] = c;
                    atom_out[found] = i;
                    for (int j = 0; j < 3; ++j) {
                      const double offset = shift[j] - floor_part[3 * i + j];  // numpy's rint: ties to even
                      offset_out[3 * found + j] = static_cast<int64_t>(std::nearbyint(offset));
                    }
                    squared_out[found] = squared;
                  }
                  ++found;
                }
              }
            }
          }
        }
      }
    }
  }
  return found;
}

}  // extern "C"

extern "C" {

// Per atom, how many of the ``n`` (centre, distance) pairs have it as centre, and the k-th smallest
// of their distances (infinite where there are fewer than k): the values numpy's sort gives.
void CrystalpropKthNearest(const int64_t* centres, const double* distances, int64_t n, int64_t n_atoms, int64_t k,
                           int64_t* counts, double* kth) {
  std::vector<int64_t> start(n_atoms + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[centres[i] + 1];
  for (int64_t a = 0; a < n_atoms; ++a) start[a + 1] += start[a];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  std::vector<double> grouped(n);
  for (int64_t i = 0; i < n; ++i) grouped[fill[centres[i]]++] = distances[i];
  for (int64_t a = 0; a < n_atoms; ++a) {
    counts[a] = start[a + 1] - start[a];
    if (counts[a] < k) {
      kth[a] = INFINITY;
      continue;
    }
    double* first = grouped.data() + start[a];
    std::nth_element(first, first + k - 1, first + counts[a]);
    kth[a] = first[k - 1];
  }
}

}  // extern "C"
