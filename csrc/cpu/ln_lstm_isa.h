#pragma once
// The layer-normalised LSTM's time loops (Note [layer-normalised LSTM] in cell_math.h),
// part of kernels_isa.h (included there, inside its ISA namespace, after the LSTM).
//
// Note [two-phase step]
// A row's LayerNorm needs statistics over the whole row, which the register tiles of the
// LSTM (V units by 4 gates) never see at once. So a step runs in two phases with a team
// barrier between them: (1) the recurrent product of every active row, in the LSTM's
// register tiles over the same packed W_hh panels, stored to a [B, 4H] buffer; (2) per
// row, one thread normalises the product, applies the gates and the cell update, then
// normalises c and writes h. The backward mirrors it: (1) the carried dh += dR_{s+1} @
// W_hh in tiles, (2) per row the cell and both LayerNorm backwards, producing dR_s.
// Phase 2 is split over rows only, so a batch of one runs it on one thread.

// Sum of a vector's lanes in a fixed order (deterministic).
template <typename S>
inline S lane_sum(const Vectorized<S>& v) {
  constexpr int V = Vectorized<S>::size();
  S lanes[V];
  v.store(lanes);
  S sum = 0;
  for (int i = 0; i < V; ++i) sum += lanes[i];
  return sum;
}

// Mean and rstd of v[0, n): the biased variance by two passes, as torch's layer_norm.
template <typename S>
inline std::pair<S, S> row_mean_rstd(const S* v, int64_t n) {
  using Vec = Vectorized<S>;
  constexpr int V = Vec::size();
  Vec acc(S(0));
  int64_t k = 0;
  for (; k + V <= n; k += V) acc = acc + Vec::loadu(v + k);
  S sum = lane_sum(acc);
  for (; k < n; ++k) sum += v[k];
  const S mean = sum / static_cast<S>(n);
  const Vec mean_v(mean);
  Vec sq(S(0));
  for (k = 0; k + V <= n; k += V) {
    const Vec d = Vec::loadu(v + k) - mean_v;
    sq = at::vec::fmadd(d, d, sq);
  }
  S squares = lane_sum(sq);
  for (; k < n; ++k) squares += (v[k] - mean) * (v[k] - mean);
  return {mean, math::layer_norm_rstd(squares / static_cast<S>(n))};
}

// ---------------------------------------------------------------- forward

template <typename S>
struct LnLstmForwardScratch {
  static constexpr int V = Vectorized<S>::size();
  int64_t gate_blocks, ld_state, ws_width;
  S *packed_hh, *h_state, *c_state, *product, *rows;

  LnLstmForwardScratch(const LnLstmForwardArgs<S>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, B = a.seq.batch;
    gate_blocks = ceil_div(H, V);
    ld_state = round_up(H, V);
    ws_width = math::ln_lstm_workspace_width(H);
    packed_hh = sc.take<S>(gate_blocks * H * 4 * V);
    h_state = sc.take<S>(2 * B * ld_state);
    c_state = sc.take<S>(2 * B * ld_state);
    product = sc.take<S>(B * 4 * H);
    // Without a workspace (inference) the rows of the step go here.
    rows = sc.take<S>(a.workspace == nullptr ? B * ws_width : 0);
  }
};

// Phase 1: h_prev @ W_hh^T for V units (4 gates) of a chunk's rows -> product [B, 4H].
template <typename S, int MR>
inline void ln_lstm_product_tile(const LnLstmForwardArgs<S>& a, const LnLstmForwardScratch<S>& w,
                                 int64_t blk, int64_t r0, const S* h_prev) {
  using Vec = Vectorized<S>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  const int64_t u0 = blk * V;
  const int64_t nu = std::min<int64_t>(V, H - u0);
  Vec acc[MR][4];
  zero_tile(acc);
  panel_gemm<S, MR, 4>(H, h_prev + r0 * w.ld_state, w.ld_state, w.packed_hh + blk * H * 4 * V,
                       acc);
  for (int m = 0; m < MR; ++m)
    for (int q = 0; q < 4; ++q) acc[m][q].store(w.product + (r0 + m) * 4 * H + q * H + u0, nu);
}

// Phase 2 for batch row r (sequence row `row`): gates, c, LN_c, h.
template <typename S>
inline void ln_lstm_forward_row(const LnLstmForwardArgs<S>& a, const LnLstmForwardScratch<S>& w,
                                int64_t r, int64_t row, const S* c_prev, S* h_next, S* c_next) {
  using Vec = Vectorized<S>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  const S* product = w.product + r * 4 * H;
  const S* x_side = a.x_side + row * a.ld_x_side;
  S* ws = a.workspace != nullptr ? a.workspace + row * w.ws_width : w.rows + r * w.ws_width;
  const auto [mean_p, rstd_p] = row_mean_rstd(product, 4 * H);
  for (int64_t u0 = 0; u0 < H; u0 += V) {
    const int64_t nu = std::min<int64_t>(V, H - u0);
    Vec pre[4];
    for (int q = 0; q < 4; ++q) {
      const int64_t k = q * H + u0;
      const Vec normalized =
          math::layer_norm_normalize(Vec::loadu(product + k, nu), Vec(mean_p), Vec(rstd_p));
      normalized.store(ws + math::kLnProduct * H + k, nu);
      pre[q] = at::vec::fmadd(Vec::loadu(a.ln_hh_weight + k, nu), normalized,
                              Vec::loadu(x_side + k, nu));
    }
    const math::LstmGates<Vec> g = math::lstm_activate(pre[0], pre[1], pre[2], pre[3]);
    g.i.store(ws + u0, nu);
    g.f.store(ws + H + u0, nu);
    g.g.store(ws + 2 * H + u0, nu);
    g.o.store(ws + 3 * H + u0, nu);
    const Vec c = math::lstm_cell_state(g, Vec::loadu(c_prev + u0, nu));
    c.store(ws + math::kLnCell * H + u0, nu);
    c.store(c_next + u0, nu);
  }
  const auto [mean_c, rstd_c] = row_mean_rstd(c_next, H);
  for (int64_t u0 = 0; u0 < H; u0 += V) {
    const int64_t nu = std::min<int64_t>(V, H - u0);
    const Vec normalized =
        math::layer_norm_normalize(Vec::loadu(c_next + u0, nu), Vec(mean_c), Vec(rstd_c));
    normalized.store(ws + math::kLnCellNormalized * H + u0, nu);
    const Vec y = at::vec::fmadd(
        Vec::loadu(a.ln_c_weight + u0, nu), normalized,
        load_or_zero(a.ln_c_bias != nullptr ? a.ln_c_bias + u0 : nullptr, nu));
    const Vec h = math::ln_lstm_hidden(Vec::loadu(ws + 3 * H + u0, nu), y);
    h.store(h_next + u0, nu);
    h.store(a.out + row * a.ld_out + u0, nu);
  }
  ws[math::kLnRstd * H] = rstd_p;
  ws[math::kLnRstd * H + 1] = rstd_c;
}

template <typename S>
void ln_lstm_forward(const LnLstmForwardArgs<S>& a, Team& team, SliceRange mine) {
  constexpr int MR = tile_rows<4>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const LnLstmForwardScratch<S> w(a, sc);
  const int64_t H = a.hidden, B = a.seq.batch, T = a.seq.steps, ld = w.ld_state;
  {  // pack W_hh, load h0 and c0 into both state buffers
    const auto [i0, i1] = worker.share(w.gate_blocks + 1);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < w.gate_blocks) {
        pack_gate_panel<S, 4>(a.w_hh, H, H, 4, H, i, w.packed_hh);
      } else {
        for (int buf = 0; buf < 2; ++buf) {
          init_state_rows(a.h0, H, ld, 0, B, w.h_state + buf * B * ld);
          init_state_rows(a.c0, H, ld, 0, B, w.c_state + buf * B * ld);
        }
      }
    }
    worker.sync();
  }
  for (int64_t s = 0; s < T; ++s) {
    const int64_t row_off = a.seq.offset_at(s), active = a.seq.rows_at(s);
    const int cur = s & 1;
    const S* h_prev = w.h_state + cur * B * ld;
    const S* c_prev = w.c_state + cur * B * ld;
    S* h_next = w.h_state + (1 - cur) * B * ld;
    S* c_next = w.c_state + (1 - cur) * B * ld;
    StepRows rows(MR);
    rows.forward(active);
    const int64_t nch = rows.chunks();
    {
      const auto [i0, i1] = worker.share(w.gate_blocks * nch);
      for (int64_t i = i0; i < i1; ++i) {
        const RowChunk ch = rows.chunk(i % nch);
        with_tile_rows<MR>(ch.rows, [&](auto mr) {
          ln_lstm_product_tile<S, decltype(mr)::value>(a, w, i / nch, ch.row, h_prev);
        });
      }
      worker.sync();
    }
    {
      const auto [r0, r1] = worker.share(active);
      for (int64_t r = r0; r < r1; ++r)
        ln_lstm_forward_row(a, w, r, row_off + r, c_prev + r * ld, h_next + r * ld,
                            c_next + r * ld);
      worker.sync();
    }
  }
  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t buf = final_state_buffer(a.seq, b);
    std::memcpy(a.h_n + b * H, w.h_state + (buf * B + b) * ld, H * sizeof(S));
    std::memcpy(a.c_n + b * H, w.c_state + (buf * B + b) * ld, H * sizeof(S));
  }
}

// ---------------------------------------------------------------- backward

template <typename S>
struct LnLstmBackwardScratch {
  static constexpr int V = Vectorized<S>::size();
  int64_t out_blocks, ld_state, ws_width;
  S *packed_hh, *dh_state, *dc_state;

  LnLstmBackwardScratch(const LnLstmBackwardArgs<S>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, B = a.seq.batch;
    out_blocks = ceil_div(H, 4 * V);
    ld_state = round_up(H, 4 * V);
    ws_width = math::ln_lstm_workspace_width(H);
    packed_hh = sc.take<S>(out_blocks * 4 * H * 4 * V);
    dh_state = sc.take<S>(B * ld_state);
    dc_state = sc.take<S>(B * ld_state);
  }
};

// Phase 1 of step s: dh_state += dR_{s+1} @ W_hh for 4V units of a chunk's rows (rows
// active at s+1; for a row not active at s this is its dL/dh0).
template <typename S, int MR>
inline void ln_lstm_backward_product_tile(const LnLstmBackwardArgs<S>& a,
                                          const LnLstmBackwardScratch<S>& w, int64_t s,
                                          int64_t blk, int64_t r0) {
  using Vec = Vectorized<S>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  Vec acc[MR][4];
  zero_tile(acc);
  panel_gemm<S, MR, 4>(4 * H, a.grad_product + (a.seq.offset_at(s + 1) + r0) * 4 * H, 4 * H,
                       w.packed_hh + blk * 4 * H * 4 * V, acc);
  for (int m = 0; m < MR; ++m) {
    S* carried = w.dh_state + (r0 + m) * w.ld_state + blk * 4 * V;
    for (int q = 0; q < 4; ++q) (Vec::loadu(carried + q * V) + acc[m][q]).store(carried + q * V);
  }
}

// Phase 2 of step s for batch row r: the output gate, LN_c's backward, the cell and gates
// i, f, g, then the recurrent product's LayerNorm backward -> grad_product row.
template <typename S>
inline void ln_lstm_backward_row(const LnLstmBackwardArgs<S>& a,
                                 const LnLstmBackwardScratch<S>& w, int64_t s, int64_t r,
                                 bool has_prev) {
  using Vec = Vectorized<S>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden, G = 4 * H;
  const int64_t row = a.seq.offset_at(s) + r;
  const S* ws = a.workspace + row * w.ws_width;
  const S* c_prev = has_prev
                        ? a.workspace + (a.seq.offset_at(s - 1) + r) * w.ws_width +
                              math::kLnCell * H
                        : a.c0 + r * H;
  const S* cell_norm = ws + math::kLnCellNormalized * H;
  const S* product_norm = ws + math::kLnProduct * H;
  const S rstd_p = ws[math::kLnRstd * H], rstd_c = ws[math::kLnRstd * H + 1];
  S* dh_carried = w.dh_state + r * w.ld_state;
  S* dc_carried = w.dc_state + r * w.ld_state;
  S* gx = a.grad_x_side + row * a.ld_grad_x_side;
  S* dy = a.grad_cell_norm + row * H;
  S* dproduct = a.grad_product + row * G;

  // h = o * tanh(y), y = LN_c(c): d pre_o, dy, and the row means LN_c's backward needs.
  Vec sum_dn(S(0)), sum_dn_n(S(0));
  for (int64_t u0 = 0; u0 < H; u0 += V) {
    const int64_t nu = std::min<int64_t>(V, H - u0);
    const Vec dh = Vec::loadu(dh_carried + u0) +
                   load_or_zero(a.grad_out != nullptr ? a.grad_out + row * a.ld_grad_out + u0
                                                      : nullptr,
                                nu);
    Vec(S(0)).store(dh_carried + u0);
    const Vec gamma = Vec::loadu(a.ln_c_weight + u0, nu);
    const Vec normalized = Vec::loadu(cell_norm + u0, nu);
    const Vec y = at::vec::fmadd(
        gamma, normalized, load_or_zero(a.ln_c_bias != nullptr ? a.ln_c_bias + u0 : nullptr, nu));
    const auto d = math::ln_lstm_output_backward(dh, Vec::loadu(ws + 3 * H + u0, nu),
                                                 math::tanh(y));
    d.o.store(gx + 3 * H + u0, nu);
    d.y.store(dy + u0, nu);
    const Vec dn = d.y * gamma;  // zero in the lanes past H: gamma loads as 0 there
    sum_dn = sum_dn + dn;
    sum_dn_n = at::vec::fmadd(dn, normalized, sum_dn_n);
  }
  const Vec mean_dn(lane_sum(sum_dn) / static_cast<S>(H));
  const Vec mean_dn_n(lane_sum(sum_dn_n) / static_cast<S>(H));

  // dc = carried + LN_c's backward; gates i, f, g; the carried dc for step s-1.
  for (int64_t u0 = 0; u0 < H; u0 += V) {
    const int64_t nu = std::min<int64_t>(V, H - u0);
    const Vec dn = Vec::loadu(dy + u0, nu) * Vec::loadu(a.ln_c_weight + u0, nu);
    const Vec dc_total =
        Vec::loadu(dc_carried + u0) + math::layer_norm_backward(dn, Vec::loadu(cell_norm + u0, nu),
                                                                Vec(rstd_c), mean_dn, mean_dn_n);
    const math::LstmGates<Vec> g{Vec::loadu(ws + u0, nu), Vec::loadu(ws + H + u0, nu),
                                 Vec::loadu(ws + 2 * H + u0, nu), Vec::loadu(ws + 3 * H + u0, nu)};
    math::LstmGateGrads<Vec> d;
    // Lanes past H: the gates load as 0, so the carried dc stays 0 there.
    math::lstm_state_gates_backward(dc_total, g, Vec::loadu(c_prev + u0, nu), d)
        .store(dc_carried + u0);
    d.i.store(gx + u0, nu);
    d.f.store(gx + H + u0, nu);
    d.g.store(gx + 2 * H + u0, nu);
  }

  // pre = x_side + gamma_hh * product_norm: LayerNorm backward over the 4H gates.
  Vec sum_dp(S(0)), sum_dp_p(S(0));
  for (int64_t k = 0; k < G; k += V) {
    const int64_t nk = std::min<int64_t>(V, G - k);
    const Vec dp = Vec::loadu(gx + k, nk) * Vec::loadu(a.ln_hh_weight + k, nk);
    sum_dp = sum_dp + dp;
    sum_dp_p = at::vec::fmadd(dp, Vec::loadu(product_norm + k, nk), sum_dp_p);
  }
  const Vec mean_dp(lane_sum(sum_dp) / static_cast<S>(G));
  const Vec mean_dp_p(lane_sum(sum_dp_p) / static_cast<S>(G));
  for (int64_t k = 0; k < G; k += V) {
    const int64_t nk = std::min<int64_t>(V, G - k);
    const Vec dp = Vec::loadu(gx + k, nk) * Vec::loadu(a.ln_hh_weight + k, nk);
    math::layer_norm_backward(dp, Vec::loadu(product_norm + k, nk), Vec(rstd_p), mean_dp,
                              mean_dp_p)
        .store(dproduct + k, nk);
  }
}

template <typename S>
void ln_lstm_backward(const LnLstmBackwardArgs<S>& a, Team& team, SliceRange mine) {
  constexpr int MR = tile_rows<4>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const LnLstmBackwardScratch<S> w(a, sc);
  const int64_t H = a.hidden, B = a.seq.batch, T = a.seq.steps, ld = w.ld_state;
  {
    const auto [i0, i1] = worker.share(w.out_blocks + 1);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < w.out_blocks) {
        pack_column_panel<S, 4>(a.w_hh, H, H, 4 * H, i, w.packed_hh);
      } else {
        init_state_rows(a.grad_h_n, H, ld, 0, B, w.dh_state);
        init_state_rows(a.grad_c_n, H, ld, 0, B, w.dc_state);
      }
    }
    worker.sync();
  }
  for (int64_t s = T - 1; s >= -1; --s) {
    const int64_t next_active = a.seq.rows_at(s + 1);
    if (next_active > 0) {
      StepRows rows(MR);
      rows.forward(next_active);
      const int64_t nch = rows.chunks();
      const auto [i0, i1] = worker.share(w.out_blocks * nch);
      for (int64_t i = i0; i < i1; ++i) {
        const RowChunk ch = rows.chunk(i % nch);
        with_tile_rows<MR>(ch.rows, [&](auto mr) {
          ln_lstm_backward_product_tile<S, decltype(mr)::value>(a, w, s, i / nch, ch.row);
        });
      }
      worker.sync();
    }
    if (s >= 0) {
      const int64_t prev_active = a.seq.rows_at(s - 1);
      const auto [r0, r1] = worker.share(a.seq.rows_at(s));
      for (int64_t r = r0; r < r1; ++r) ln_lstm_backward_row(a, w, s, r, r < prev_active);
      worker.sync();
    }
  }
  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) {
    std::memcpy(a.grad_h0 + b * H, w.dh_state + b * ld, H * sizeof(S));
    std::memcpy(a.grad_c0 + b * H, w.dc_state + b * ld, H * sizeof(S));
  }
}
