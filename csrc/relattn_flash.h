// Compile-time features and the key-tile schedule of the flash-style tensor-core forward, torch- and CUDA-free
// (__host__ __device__; the schedule is unit-tested on the CPU by csrc/tests/test_helpers.cpp).
//
// Features: the kernel is instantiated per feature set, so the common case's loop holds no mask, causal or dropout
// code (flash-attention's BOOL_SWITCH, collapsed to two sets to keep the instantiation count and build time small):
//   PLAIN   no key padding, no additive mask, not causal, no dropout (head_mask is applied once per row, at the end);
//   GENERAL anything else, checked per element at run time (the far tiles still take the plain loop where the call
//           allows: no masks and no dropout; far-right tiles also not causal).
// Schedule: for a query block at positions [pos_first, pos_last] the key tiles split into far-left tiles (every pair
// j - i <= -R: table row 0 for all), band tiles, and far-right tiles (j - i >= R: row 2R). Full far tiles run the
// plain-attention loop (one FFMA + one EX2 per score, the relative term a per-row constant); band tiles, the partial
// last tile and, for causal calls, the far-right tiles run the general loop. Far tiles are visited first, then the rest in
// ascending order (the causal early exit needs ascending keys).
#pragma once

#include <type_traits>

#include "relattn.h"
#include "relattn_helpers.h"

namespace nezha {

enum class Features : int { PLAIN = 0, GENERAL = 1 };

// True when the call has per-pair masks or dropout: every tile then needs the general loop.
NZ_HD bool has_pair_masks(const AttnArgs& a) {
    return a.key_padding != nullptr || a.additive_mask != nullptr || a.dropout_p > 0.0f;
}

NZ_HD Features features_of(const AttnArgs& a) {
    return has_pair_masks(a) || a.causal ? Features::GENERAL : Features::PLAIN;
}

// launch(std::integral_constant<int, Features>{}): the kernels' compile-time feature set for the call (host).
template <typename L>
inline const char* dispatch_features(const AttnArgs& a, L&& launch) {
    if (features_of(a) == Features::PLAIN) return launch(std::integral_constant<int, 0>{});
    return launch(std::integral_constant<int, 1>{});
}

// floor(x / m) and ceil(x / m) for m > 0 and any sign of x.
NZ_HD int floor_div(int x, int m) { return x >= 0 ? x / m : -((-x + m - 1) / m); }
NZ_HD int ceil_div(int x, int m) { return -floor_div(-x, m); }

struct KeySchedule {
    int n_left;    // far-left tiles [0, n_left)
    int mid_end;   // band tiles [n_left, mid_end), far-right tiles [mid_end, n_full)
    int n_full;    // tiles with every key below Lk
    int n_tiles;   // every tile, the partial one included

    NZ_HD int n_far() const { return n_left + n_full - mid_end; }
    // Key tile of step s (0 <= s < n_tiles): far tiles first (left, then right), then band and partial tiles.
    NZ_HD int tile(int s) const {
        const int g = s - n_far();  // index among the general tiles
        const int general = g < mid_end - n_left ? n_left + g : n_full + (g - (mid_end - n_left));
        return s < n_left ? s : (s < n_far() ? mid_end + (s - n_left) : general);
    }
    // True when far step s (< n_far()) is a far-right tile.
    NZ_HD bool far_right(int s) const { return s >= n_left; }
};

// The schedule of the query block at positions [pos_first, pos_last] over Lk keys in tiles of bn, R >= 1.
// far_left / far_right: whether far tiles on that side may skip the general loop (no masks, no dropout; far-right
// tiles also not causal: every pair there is in the future).
NZ_HD KeySchedule key_schedule(int pos_first, int pos_last, int Lk, int R, int bn, bool far_left, bool far_right) {
    KeySchedule s;
    s.n_full = Lk / bn;
    s.n_tiles = (Lk + bn - 1) / bn;
    // Tile t is far-left when its last key t * bn + bn - 1 <= pos_first - R.
    int left = far_left ? floor_div(pos_first - R + 1, bn) : 0;
    left = left < 0 ? 0 : (left > s.n_full ? s.n_full : left);
    s.n_left = left;
    // Tile t is far-right when its first key t * bn >= pos_last + R.
    int right = far_right ? ceil_div(pos_last + R, bn) : s.n_full;
    right = right < left ? left : (right > s.n_full ? s.n_full : right);
    s.mid_end = right;
    return s;
}

}  // namespace nezha
