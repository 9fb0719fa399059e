// Binding of the fused KV-cache decoder (cpu/decode.h): a Decoder object holds raw pointers to the
// model's weights and to the caller's KV caches, so it validates every array once, here, and keeps
// a reference to each so none can be freed under it. Arrays must already be float32 and
// C-contiguous (the caches writeable): a converted copy would silently detach the pointers.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>

#include "bindings/array_checks.h"
#include "bindings/native_init.h"
#include "cpu/decode.h"
#include "cpu/quant.h"

namespace py = pybind11;

namespace kgpt_bind {
namespace {


// The one conversion of kernelgpt.sample.SamplingParams (already validated in Python) into its
// C++ twin; checked again here since the object could be anything.
kgpt::cpu::SamplingParams sampling_params(py::handle params) {
  kgpt::cpu::SamplingParams sp;
  sp.temperature = params.attr("temperature").cast<double>();
  py::object k = params.attr("top_k"), p = params.attr("top_p");
  sp.top_k = k.is_none() ? 0 : k.cast<int64_t>();
  sp.top_p = p.is_none() ? 1.0 : p.cast<double>();
  if (!(sp.temperature >= 0.0) || !std::isfinite(sp.temperature))
    throw std::invalid_argument("temperature must be a finite number >= 0");
  if (!(sp.top_p > 0.0)) throw std::invalid_argument("top_p must be > 0");
  py::object mp = params.attr("min_p"), rp = params.attr("repetition_penalty");
  sp.min_p = mp.is_none() ? 0.0 : mp.cast<double>();
  sp.repetition_penalty = rp.is_none() ? 1.0 : rp.cast<double>();
  if (!(sp.min_p >= 0.0 && sp.min_p <= 1.0))
    throw std::invalid_argument("min_p must lie in [0, 1]");
  if (!(sp.repetition_penalty > 0.0) || !std::isfinite(sp.repetition_penalty))
    throw std::invalid_argument("repetition_penalty must be a finite number > 0");
  return sp;
}

class Decoder {
 public:
  // weights: the (name, array) pairs of the token table, position table, final norm weight and
  // bias, and (optionally, a fifth pair) the lm_head; layers: per layer, the block's 12 (name,
  // array) pairs in the kernel's slot order (ln_1 w/b, qkv w/b, attention projection w/b, ln_2
  // w/b, MLP up w/b, MLP down w/b). An array may be None where the architecture has no such
  // parameter: a bias (bias=False), a norm's bias (RMSNorm), the position table (rotary
  // positions), the lm_head (tied: wte). The names come from the model's parameter table and
  // serve only the error messages. n_kv_head (None: n_head) key/value heads in the caches.
  // weights_format "fp32" (the exact path), "bf16" or "int8": qlayers then holds, per layer, the
  // four matrices (qkv, attention projection, MLP up, MLP down) and qhead the lm_head, each a
  // (name, data, scales) triple: data (N, K) uint16 (bf16) or int8, scales (N, K/32) float32
  // (int8; None for bf16), made by kernelgpt.quant from the float32 matrices.
  Decoder(py::list weights, py::list layers, py::list caches, int64_t n_head, int64_t batch,
          double eps, py::object n_kv_head, bool rmsnorm, bool rope, bool swiglu,
          double rope_theta, const std::string& weights_format, py::object qlayers,
          py::object qhead) {
    using kgpt::cpu::WeightFormat;
    if (weights_format == "fp32")
      m_.wformat = WeightFormat::fp32;
    else if (weights_format == "bf16")
      m_.wformat = WeightFormat::bf16;
    else if (weights_format == "int8")
      m_.wformat = WeightFormat::int8;
    else
      throw std::invalid_argument("weights_format must be 'fp32', 'bf16' or 'int8', got '" +
                                  weights_format + "'");
    const bool quant = m_.wformat != WeightFormat::fp32;
    const int64_t max_batch = kgpt::cpu::kDecodeMaxBatch;
    if (py::len(weights) != 4 && py::len(weights) != 5)
      throw std::invalid_argument("weights must hold 4 or 5 (name, array) pairs, got " +
                                  std::to_string(py::len(weights)));
    const py::array te = take(weights[0], 2, {-1, -1}, false);
    m_.V = te.shape(0);
    m_.C = te.shape(1);
    const int64_t C = m_.C;
    if (n_head < 1 || C % n_head != 0)
      throw std::invalid_argument("n_head must be >= 1 and divide C=" + std::to_string(C) +
                                  ", got " + std::to_string(n_head));
    const int64_t nkv = n_kv_head.is_none() ? n_head : int_arg(n_kv_head, "n_kv_head", 1, n_head);
    if (n_head % nkv != 0)
      throw std::invalid_argument("n_kv_head must divide n_head=" + std::to_string(n_head) +
                                  ", got " + std::to_string(nkv));
    if (batch < 1 || batch > max_batch)
      throw std::invalid_argument("batch must be in [1, " + std::to_string(max_batch) +
                                  "] for the fused decoder with " + weights_format +
                                  " weights, got " + std::to_string(batch));
    if (!(std::isfinite(eps) && eps > 0.0))
      throw std::invalid_argument("eps must be a finite number > 0");
    if (rope && (!(std::isfinite(rope_theta) && rope_theta > 0.0) || (C / n_head) % 2 != 0))
      throw std::invalid_argument("rotary positions need rope_theta > 0 (finite) and an even "
                                  "head size");
    m_.NH = n_head;
    m_.NKV = nkv;
    m_.B = batch;
    m_.eps = static_cast<float>(eps);
    m_.rmsnorm = rmsnorm;
    m_.rope = rope;
    m_.swiglu = swiglu;
    m_.rope_theta = rope_theta;
    const std::optional<py::array> pe = take_opt(weights[1], 2, {-1, C});
    const int64_t HS = C / n_head;
    if (pe) {
      m_.maxT = pe->shape(0);
      m_.wpe = ptr(*pe);
    } else {  // no position table: the caches say how many positions there are
      if (!rope) throw std::invalid_argument("wpe is required without rotary positions");
      if (py::len(caches) == 0) throw std::invalid_argument("caches must be non-empty");
      py::sequence kv0 = caches[0].cast<py::sequence>();
      if (py::len(kv0) != 2 || !py::isinstance<py::array>(kv0[0]) ||
          py::reinterpret_borrow<py::array>(kv0[0]).ndim() != 4)
        throw std::invalid_argument("caches[0] must be a (k, v) pair of 4-D arrays");
      m_.maxT = py::reinterpret_borrow<py::array>(kv0[0]).shape(2);
    }
    if (m_.maxT < 1) throw std::invalid_argument("the model must have >= 1 positions");
    m_.wte = static_cast<const float*>(te.data());
    m_.lnf_w = ptr(take(weights[2], 1, {C}, false));
    m_.lnf_b = optr(take_opt(weights[3], 1, {C}));
    if (!rmsnorm && m_.lnf_b == nullptr)
      throw std::invalid_argument("ln_f.b is required with layernorm");
    m_.head = m_.wte;
    if (py::len(weights) == 5) {
      const std::optional<py::array> hd = take_opt(weights[4], 2, {m_.V, C});
      if (hd) m_.head = ptr(*hd);
    }
    if (py::len(layers) != py::len(caches) || py::len(layers) == 0)
      throw std::invalid_argument("layers and caches must be non-empty lists of equal length, got " +
                                  std::to_string(py::len(layers)) + " and " +
                                  std::to_string(py::len(caches)));
    const int64_t QW = (n_head + 2 * nkv) * HS;
    for (size_t l = 0; l < py::len(layers); ++l) {
      py::sequence ws = layers[l].cast<py::sequence>();
      if (py::len(ws) != 12)
        throw std::invalid_argument("layer " + std::to_string(l) + " must hold 12 arrays, got " +
                                    std::to_string(py::len(ws)));
      if (l == 0) {  // the MLP's hidden width, from c_fc's rows (GPT-2: 4C)
        const py::array fc = take(ws[8], 2, {-1, C}, false);
        const int64_t rows = fc.shape(0);
        if (rows < 1 || (swiglu && rows % 2 != 0))
          throw std::invalid_argument("mlp.c_fc.w must have a positive (even with SwiGLU) row "
                                      "count, got " + shape_str(fc));
        m_.H = swiglu ? rows / 2 : rows;
      }
      const int64_t H = m_.H, FW = swiglu ? 2 * H : H;
      const std::vector<std::vector<int64_t>> shapes = {{C}, {C}, {QW, C}, {QW}, {C, C}, {C},
                                                        {C}, {C}, {FW, C}, {FW}, {C, H}, {C}};
      // required: the norm weights and the matrices; the biases where the config has them
      const bool required[12] = {true, !rmsnorm, true, false, true, false,
                                 true, !rmsnorm, true, false, true, false};
      const float* p[12];
      for (int i = 0; i < 12; ++i) {
        const int nd = static_cast<int>(shapes[i].size());
        p[i] = required[i] ? ptr(take(ws[i], nd, shapes[i], false))
                           : optr(take_opt(ws[i], nd, shapes[i]));
      }
      py::sequence kv = caches[l].cast<py::sequence>();
      if (py::len(kv) != 2)
        throw std::invalid_argument("caches[" + std::to_string(l) + "] must be a (k, v) pair");
      const std::vector<int64_t> cs = {batch, nkv, m_.maxT, HS};
      const std::string kn = "k_cache[" + std::to_string(l) + "]";
      const std::string vn = "v_cache[" + std::to_string(l) + "]";
      float* kc = static_cast<float*>(take(kn, kv[0], 4, cs, true).mutable_data());
      float* vc = static_cast<float*>(take(vn, kv[1], 4, cs, true).mutable_data());
      m_.layers.push_back({p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10],
                           p[11], kc, vc, {}, {}, {}, {}});
      if (quant) {
        if (qlayers.is_none() || py::len(qlayers) != py::len(layers))
          throw std::invalid_argument("qlayers must hold the quantized matrices of each of the " +
                                      std::to_string(py::len(layers)) + " layers with " +
                                      weights_format + " weights");
        py::sequence qs = qlayers.cast<py::list>()[l].cast<py::sequence>();
        if (py::len(qs) != 4)
          throw std::invalid_argument("qlayers[" + std::to_string(l) + "] must hold 4 matrices");
        kgpt::cpu::DecodeLayer& L = m_.layers.back();
        L.q_attn = take_q(qs[0], QW, C);
        L.q_proj = take_q(qs[1], C, C);
        L.q_fc = take_q(qs[2], swiglu ? 2 * m_.H : m_.H, C);
        L.q_fcproj = take_q(qs[3], C, m_.H);
      }
    }
    if (quant) {
      if (qhead.is_none()) throw std::invalid_argument("qhead (the quantized lm_head) is required");
      m_.q_head = take_q(qhead, m_.V, C);
    }
    scratch_.assign(static_cast<size_t>(kgpt::cpu::decode_scratch_floats(m_)), 0.f);
  }

  int64_t single_thread_steps() const { return m_.single_steps_left; }

  // pos: one position for every row (an int), or row b's own position (a (B,) int64 array: a
  // ragged batch, each row at its own).
  void step(py::array_t<int32_t, py::array::c_style> tok, py::object pos,
            py::array_t<float, py::array::c_style> logits) {
    if (tok.ndim() != 1 || tok.shape(0) != m_.B)
      throw std::invalid_argument("tok must have shape (B,)=(" + std::to_string(m_.B) +
                                  ",), got " + shape_str(tok));
    if (logits.ndim() != 2 || logits.shape(0) != m_.B || logits.shape(1) != m_.V)
      throw std::invalid_argument("logits must have shape (B, V)=(" + std::to_string(m_.B) +
                                  ", " + std::to_string(m_.V) + "), got " + shape_str(logits));
    int64_t pv[kgpt::cpu::kDecodeMaxBatch];
    if (py::isinstance<py::array>(pos)) {
      py::array pa = py::reinterpret_borrow<py::array>(pos);
      if (!pa.dtype().is(py::dtype::of<int64_t>()) || !(pa.flags() & py::array::c_style))
        throw py::type_error("pos must be an int or a C-contiguous int64 array");
      if (pa.ndim() != 1 || pa.shape(0) != m_.B)
        throw std::invalid_argument("pos must be an int or have shape (B,)=(" +
                                    std::to_string(m_.B) + ",), got " + shape_str(pa));
      std::memcpy(pv, pa.data(), sizeof(int64_t) * static_cast<size_t>(m_.B));
    } else {
      if (!PyIndex_Check(pos.ptr()) || py::isinstance<py::bool_>(pos))
        throw py::type_error("pos must be an int or a (B,) int64 array");
      const int64_t p0 = py::reinterpret_steal<py::int_>(PyNumber_Index(pos.ptr())).cast<int64_t>();
      for (int64_t b = 0; b < m_.B; ++b) pv[b] = p0;
    }
    for (int64_t b = 0; b < m_.B; ++b)
      if (pv[b] < 0 || pv[b] >= m_.maxT)
        throw std::invalid_argument("pos must be in [0, " + std::to_string(m_.maxT) + "), got " +
                                    std::to_string(pv[b]));
    const int32_t* t = tok.data();
    for (int64_t b = 0; b < m_.B; ++b)
      if (t[b] < 0 || t[b] >= m_.V)
        throw std::invalid_argument("tok holds id " + std::to_string(t[b]) + " outside [0, " +
                                    std::to_string(m_.V) + ")");
    float* out = logits.mutable_data();
    py::gil_scoped_release nogil;
    kgpt::cpu::decode_step(m_, t, pv, out, scratch_.data());
  }

  // Up to n = out.shape[0] steps of step() plus the token choice (cpu::decode_sample): returns
  // (steps taken, whether a non-finite logit stopped the loop). tok (B,) int32 is updated in
  // place to the last tokens; done (B,) uint8 likewise; u (n, B) float64 draws in [0, 1).
  py::tuple sample(py::array_t<int32_t, py::array::c_style> out,
                   py::array_t<int32_t, py::array::c_style> tok, int64_t pos,
                   py::array_t<double, py::array::c_style> u, py::handle params,
                   py::array_t<int32_t, py::array::c_style> stop,
                   py::array_t<uint8_t, py::array::c_style> done,
                   py::array_t<float, py::array::c_style> logits, bool lm_filter,
                   py::object seen) {
    const int64_t B = m_.B;
    if (out.ndim() != 2 || out.shape(1) != B)
      throw std::invalid_argument("out must have shape (n, B) with B=" + std::to_string(B) +
                                  ", got " + shape_str(out));
    const int64_t n = out.shape(0);
    if (u.ndim() != 2 || u.shape(0) != n || u.shape(1) != B)
      throw std::invalid_argument("u must have the shape of out (" + std::to_string(n) + ", " +
                                  std::to_string(B) + "), got " + shape_str(u));
    if (tok.ndim() != 1 || tok.shape(0) != B)
      throw std::invalid_argument("tok must have shape (B,)=(" + std::to_string(B) +
                                  ",), got " + shape_str(tok));
    if (done.ndim() != 1 || done.shape(0) != B)
      throw std::invalid_argument("done must have shape (B,)=(" + std::to_string(B) +
                                  ",), got " + shape_str(done));
    if (stop.ndim() != 1) throw std::invalid_argument("stop must be 1-D, got " + shape_str(stop));
    if (logits.ndim() != 2 || logits.shape(0) != B || logits.shape(1) != m_.V)
      throw std::invalid_argument("logits must have shape (B, V)=(" + std::to_string(B) +
                                  ", " + std::to_string(m_.V) + "), got " + shape_str(logits));
    if (pos < 0 || pos + n > m_.maxT)
      throw std::invalid_argument("positions pos..pos+n-1 must lie in [0, " +
                                  std::to_string(m_.maxT) + "), got pos=" + std::to_string(pos) +
                                  ", n=" + std::to_string(n));
    kgpt::cpu::SamplingParams sp = sampling_params(params);
    uint8_t* pseen = nullptr;
    if (sp.repetition_penalty != 1.0) {
      if (seen.is_none())
        throw std::invalid_argument("seen (B, V) uint8 is required with a repetition_penalty");
      if (!py::isinstance<py::array_t<uint8_t>>(seen))
        throw py::type_error("seen must be a uint8 array");
      auto sa = seen.cast<py::array_t<uint8_t>>();
      if (!(sa.flags() & py::array::c_style) || !sa.writeable() || sa.ndim() != 2 ||
          sa.shape(0) != B || sa.shape(1) != m_.V)
        throw std::invalid_argument("seen must be a writeable C-contiguous (B, V)=(" +
                                    std::to_string(B) + ", " + std::to_string(m_.V) +
                                    ") uint8 array, got shape " + shape_str(sa));
      pseen = sa.mutable_data();
    }
    const int32_t* t = tok.data();
    for (int64_t b = 0; b < B; ++b)
      if (t[b] < 0 || t[b] >= m_.V)
        throw std::invalid_argument("tok holds id " + std::to_string(t[b]) + " outside [0, " +
                                    std::to_string(m_.V) + ")");
    const double* pu = u.data();
    for (int64_t i = 0; i < n * B; ++i)
      if (!(pu[i] >= 0.0 && pu[i] < 1.0)) throw std::invalid_argument("u must lie in [0, 1)");
    int32_t* po = out.mutable_data();
    int32_t* pt = tok.mutable_data();
    uint8_t* pd = done.mutable_data();
    float* pl = logits.mutable_data();
    sp.stop = stop.data();
    sp.nstop = stop.shape(0);
    bool nonfinite = false;
    int64_t steps;
    {
      py::gil_scoped_release nogil;
      // The filter's table is rebuilt from the weights on every call (they may have changed in
      // place since the last), and only where it is used.
      const bool filter = lm_filter && m_.wformat == kgpt::cpu::WeightFormat::fp32 &&
                          kgpt::cpu::lm_filter_applies(sp, m_.V);
      if (filter) kgpt::cpu::lm_filter_build(filter_, m_.head, m_.V, m_.C);
      steps = kgpt::cpu::decode_sample(m_, scratch_.data(), pl, pt, pos, n, pu, sp, pd, po,
                                       &nonfinite, pick_, filter ? &filter_ : nullptr, pseen);
    }
    return py::make_tuple(steps, nonfinite);
  }

 private:
  // Checks one array (float32, C-contiguous, ndim, shape with -1 = any, writeable when asked),
  // keeps a reference to it (for the Decoder's lifetime) and returns it.
  py::array take(py::handle pair, int nd, const std::vector<int64_t>& shape, bool writeable) {
    py::sequence nv = pair.cast<py::sequence>();
    if (py::len(nv) != 2) throw std::invalid_argument("weights are (name, array) pairs");
    return take(nv[0].cast<std::string>(), nv[1], nd, shape, writeable);
  }
  py::array take(const std::string& name, py::handle obj, int nd,
                 const std::vector<int64_t>& shape, bool writeable) {
    if (!py::isinstance<py::array>(obj))
      throw py::type_error(name + " must be a numpy array");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<float>()) || !(a.flags() & py::array::c_style))
      throw py::type_error(name + " must be a C-contiguous float32 array");
    bool ok = a.ndim() == nd;
    for (int i = 0; ok && i < nd; ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
    if (!ok) {
      std::string want = "(";
      for (int i = 0; i < nd; ++i)
        want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
      throw std::invalid_argument(name + " must have shape " + want +
                                  (nd == 1 ? ",)" : ")") + ", got " + shape_str(a));
    }
    if (writeable && !a.writeable())
      throw std::invalid_argument(name + " must be writeable");
    keep_.push_back(a);
    return a;
  }
  // A quantized matrix (name, data, scales) of shape (N, K) in m_.wformat; keeps its arrays.
  kgpt::cpu::QMat take_q(py::handle triple, int64_t N, int64_t K) {
    py::sequence t = triple.cast<py::sequence>();
    if (py::len(t) != 3) throw std::invalid_argument("a quantized matrix is a (name, data, scales) triple");
    const std::string name = t[0].cast<std::string>();
    const bool int8 = m_.wformat == kgpt::cpu::WeightFormat::int8;
    if (!py::isinstance<py::array>(t[1]))
      throw py::type_error(name + " must be a numpy array");
    py::array a = py::reinterpret_borrow<py::array>(t[1]);
    const bool dt = int8 ? a.dtype().is(py::dtype::of<int8_t>()) : a.dtype().is(py::dtype::of<uint16_t>());
    if (!dt || !(a.flags() & py::array::c_style))
      throw py::type_error(name + " must be a C-contiguous " + (int8 ? "int8" : "uint16 (bfloat16)") +
                           " array");
    if (a.ndim() != 2 || a.shape(0) != N || a.shape(1) != K)
      throw std::invalid_argument(name + " must have shape (" + std::to_string(N) + ", " +
                                  std::to_string(K) + "), got " + shape_str(a));
    keep_.push_back(a);
    kgpt::cpu::QMat q;
    q.w = a.data();
    if (int8) {
      if (K % kgpt::cpu::kQ8Block != 0)
        throw std::invalid_argument(name + ": int8 weights need an input dimension that is a "
                                    "multiple of 32, got " + std::to_string(K));
      q.d = ptr(take(name + " scales", t[2], 2, {N, K / kgpt::cpu::kQ8Block}, false));
    }
    return q;
  }
  static const float* ptr(const py::array& a) { return static_cast<const float*>(a.data()); }
  static const float* optr(const std::optional<py::array>& a) { return a ? ptr(*a) : nullptr; }
  // take() for a pair whose array may be None (an absent parameter): nullopt then.
  std::optional<py::array> take_opt(py::handle pair, int nd, const std::vector<int64_t>& shape) {
    py::sequence nv = pair.cast<py::sequence>();
    if (py::len(nv) != 2) throw std::invalid_argument("weights are (name, array) pairs");
    if (nv[1].is_none()) return std::nullopt;
    return take(nv[0].cast<std::string>(), nv[1], nd, shape, false);
  }

  kgpt::cpu::DecodeModel m_;
  std::vector<py::array> keep_;
  std::vector<float> scratch_;
  kgpt::cpu::PickScratch pick_;
  kgpt::cpu::LmFilter filter_;  // sample()'s bfloat16 lm_head table, when asked for
};

// One token from one row of logits by pick_tokens' rule (cpu::pick_token): what Decoder.sample
// does per row, callable alone so its selection can be checked on any logits.
int64_t pick_token(py::array_t<float, py::array::c_style> logits, py::handle params, double u,
                   py::object seen) {
  if (logits.ndim() != 1 || logits.shape(0) < 1)
    throw std::invalid_argument("logits must be a non-empty 1-D array, got shape " +
                                shape_str(logits));
  const kgpt::cpu::SamplingParams sp = sampling_params(params);
  if (!(u >= 0.0 && u < 1.0)) throw std::invalid_argument("u must lie in [0, 1)");
  const float* pl = logits.data();
  const int64_t V = logits.shape(0);
  for (int64_t j = 0; j < V; ++j)
    if (!std::isfinite(pl[j]))
      throw std::invalid_argument("logits must be finite, got " + std::to_string(pl[j]) +
                                  " at index " + std::to_string(j));
  std::vector<uint8_t> mask;
  if (seen.is_none() && sp.repetition_penalty != 1.0)
    throw std::invalid_argument("seen (the token ids so far) is required with a "
                                "repetition_penalty");
  if (!seen.is_none()) {  // the ids seen so far, for the repetition penalty
    py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids =
        py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(seen);
    if (!ids || ids.ndim() != 1)
      throw std::invalid_argument("seen must be a 1-D sequence of token ids");
    mask.assign(static_cast<size_t>(V), 0);
    for (py::ssize_t i = 0; i < ids.shape(0); ++i) {
      const int64_t id = ids.data()[i];
      if (id < 0 || id >= V)
        throw std::invalid_argument("seen holds id " + std::to_string(id) + " outside [0, " +
                                    std::to_string(V) + ")");
      mask[static_cast<size_t>(id)] = 1;
    }
  }
  if (!seen.is_none() && mask.empty()) mask.assign(static_cast<size_t>(V), 0);  // no ids
  kgpt::cpu::PickScratch ps;
  py::gil_scoped_release nogil;
  return kgpt::cpu::pick_token(pl, V, sp, u, ps, mask.empty() ? nullptr : mask.data());
}

// Test hook: the lm_head filter built from wte (V, C) applied to one row x (C,): (approximate
// logits (V,), the bound E, negative where the exact path is needed).
py::tuple lm_filter_probe(py::array_t<float, py::array::c_style> wte,
                          py::array_t<float, py::array::c_style> x) {
  if (wte.ndim() != 2 || wte.shape(0) < 1 || wte.shape(1) < 1)
    throw std::invalid_argument("wte must be a non-empty 2-D array, got shape " + shape_str(wte));
  const int64_t V = wte.shape(0), C = wte.shape(1);
  if (x.ndim() != 1 || x.shape(0) != C)
    throw std::invalid_argument("x must have shape (C,)=(" + std::to_string(C) + ",), got " +
                                shape_str(x));
  py::array_t<float> approx(V);
  float* pa = approx.mutable_data();
  const float* pw = wte.data();
  const float* px = x.data();
  double E;
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::LmFilter f;
    kgpt::cpu::lm_filter_build(f, pw, V, C);
    kgpt::cpu::lm_filter_logits(pa, px, f, 1, 0, V);
    E = kgpt::cpu::lm_filter_bound(f, px);
  }
  return py::make_tuple(approx, E);
}

// Test hooks and tools: the quantized matrix products (quant.h) on whole matrices.
// The optional (N,) float32 bias of the quantized products: its data, or nullptr for None; held
// holds the array while the GIL is released.
const float* optional_bias(const py::object& bias, int64_t N,
                           py::array_t<float, py::array::c_style>& held) {
  if (bias.is_none()) return nullptr;
  held = bias.cast<py::array_t<float, py::array::c_style>>();
  if (held.ndim() != 1 || held.shape(0) != N)
    throw std::invalid_argument("bias must have shape (N,), got " + shape_str(held));
  return held.data();
}

void q8_matmul(py::array_t<float, py::array::c_style> out, py::array_t<float, py::array::c_style> x,
               py::array_t<int8_t, py::array::c_style> wq, py::array_t<float, py::array::c_style> wd,
               py::object bias) {
  if (x.ndim() != 2 || wq.ndim() != 2 || x.shape(1) != wq.shape(1))
    throw std::invalid_argument("x (B, K) and wq (N, K) must be 2-D with the same K, got " +
                                shape_str(x) + " and " + shape_str(wq));
  const int64_t B = x.shape(0), K = x.shape(1), N = wq.shape(0);
  if (K % kgpt::cpu::kQ8Block != 0)
    throw std::invalid_argument("int8 weights need K to be a multiple of 32, got " +
                                std::to_string(K));
  if (wd.ndim() != 2 || wd.shape(0) != N || wd.shape(1) != K / kgpt::cpu::kQ8Block)
    throw std::invalid_argument("wd must have shape (N, K/32), got " + shape_str(wd));
  if (out.ndim() != 2 || out.shape(0) != B || out.shape(1) != N)
    throw std::invalid_argument("out must have shape (B, N), got " + shape_str(out));
  py::array_t<float, py::array::c_style> ba;
  const float* pb = optional_bias(bias, N, ba);
  float* po = out.mutable_data();
  py::gil_scoped_release nogil;
  kgpt::cpu::q8_matmul(po, x.data(), wq.data(), wd.data(), pb, B, N, K);
}

void bf16_matmul(py::array_t<float, py::array::c_style> out,
                 py::array_t<float, py::array::c_style> x,
                 py::array_t<uint16_t, py::array::c_style> w, py::object bias) {
  if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(1) || x.shape(1) < 1)
    throw std::invalid_argument("x (B, K) and w (N, K) must be 2-D with the same K >= 1, got " +
                                shape_str(x) + " and " + shape_str(w));
  const int64_t B = x.shape(0), K = x.shape(1), N = w.shape(0);
  if (out.ndim() != 2 || out.shape(0) != B || out.shape(1) != N)
    throw std::invalid_argument("out must have shape (B, N), got " + shape_str(out));
  py::array_t<float, py::array::c_style> ba;
  const float* pb = optional_bias(bias, N, ba);
  float* po = out.mutable_data();
  py::gil_scoped_release nogil;
  kgpt::cpu::bf16_matmul(po, x.data(), w.data(), pb, B, N, K);
}

uint64_t weights_fingerprint(py::buffer b) {
  py::buffer_info info = b.request();
  if (!PyBuffer_IsContiguous(info.view(), 'C'))
    throw std::invalid_argument("weights_fingerprint needs a C-contiguous buffer");
  const size_t n = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
  const void* p = info.ptr;
  py::gil_scoped_release nogil;
  return kgpt::cpu::fingerprint(p, n);
}

}  // namespace

void init_decode(py::module_& m) {
  m.def("_q8_matmul", &q8_matmul, py::arg("out").noconvert(), py::arg("x").noconvert(),
        py::arg("wq").noconvert(), py::arg("wd").noconvert(), py::arg("bias") = py::none(),
        "out (B, N) = x (B, K) @ dequant(wq, wd).T + bias with x quantized per block of 32 "
        "(kernelgpt.quant.matmul_q8_ref is the specification).");
  m.def("_bf16_matmul", &bf16_matmul, py::arg("out").noconvert(), py::arg("x").noconvert(),
        py::arg("w").noconvert(), py::arg("bias") = py::none(),
        "out (B, N) = x (B, K) @ bf16(w).T + bias, w (N, K) uint16 bfloat16 bits.");
  m.def("quant_paths", [] {
          return py::make_tuple(std::string(kgpt::cpu::q8_path()),
                                std::string(kgpt::cpu::bf16_path()));
        },
        "(int8 path, bf16 path) the quantized matrix products take now: 'avx512_vnni', "
        "'avx512', 'avx2' or 'portable'.");
  m.def("weights_fingerprint", &weights_fingerprint, py::arg("buffer"),
        "A 64-bit fingerprint of a C-contiguous buffer's bytes (the same for any thread count).");
  py::class_<Decoder>(m, "Decoder",
                      "Fused KV-cache decoding over a model's weights and the caller's caches "
                      "(batch <= 16): step(tok, pos, logits) runs every layer and the lm_head for "
                      "one new position, writing the caches at pos. Each row's values are "
                      "bitwise those of the row decoded alone (fp32: the op-by-op native step at "
                      "batch 1).")
      .def(py::init<py::list, py::list, py::list, int64_t, int64_t, double, py::object, bool, bool,
                    bool, double, const std::string&, py::object, py::object>(),
           py::arg("weights"), py::arg("layers"), py::arg("caches"), py::arg("n_head"),
           py::arg("batch"), py::arg("eps") = 1e-5, py::kw_only(),
           py::arg("n_kv_head") = py::none(), py::arg("rmsnorm") = false,
           py::arg("rope") = false, py::arg("swiglu") = false, py::arg("rope_theta") = 10000.0,
           py::arg("weights_format") = "fp32", py::arg("qlayers") = py::none(),
           py::arg("qhead") = py::none())
      .def("step", &Decoder::step, py::arg("tok").noconvert(), py::arg("pos"),
           py::arg("logits").noconvert())
      .def_property_readonly("single_thread_steps", &Decoder::single_thread_steps,
                             "Steps left that run on one thread because the last multi-thread "
                             "step's threads mostly waited for each other (cores shared with "
                             "other processes); 0 on an idle machine.")
      .def("sample", &Decoder::sample, py::arg("out").noconvert(), py::arg("tok").noconvert(),
           py::arg("pos"), py::arg("u").noconvert(), py::arg("params"), py::arg("stop").noconvert(), py::arg("done").noconvert(),
           py::arg("logits").noconvert(), py::arg("lm_filter") = false,
           py::arg("seen") = py::none(),
           "Up to out.shape[0] steps with the token choice of kernelgpt.sample.pick_tokens "
           "in the loop; returns (steps taken, stopped on a non-finite logit). lm_filter: "
           "for greedy and top_k in (0, V), read a bfloat16 copy of the lm_head (rebuilt from "
           "the weights on each call) to bound every logit, and compute exact logits only for "
           "the tokens the bound cannot rule out: the same tokens, fewer bytes per step; "
           "logits then holds exact values only where the choice read them (it is not used "
           "with a repetition_penalty). seen: (B, V) uint8, each row's ids so far, required "
           "with a repetition_penalty and updated with each chosen token.");
  m.def("_lm_filter_probe", &lm_filter_probe, py::arg("wte").noconvert(), py::arg("x").noconvert(),
        "Test hook: (approximate logits, bound E) of Decoder.sample's lm_head filter for one "
        "row x; E < 0 where the exact path would be taken.");
  m.def("pick_token", &pick_token, py::arg("logits").noconvert(), py::arg("params"), py::arg("u"),
        py::arg("seen") = py::none(),
        "One token id from 1-D finite float32 logits by the rule of "
        "kernelgpt.sample.pick_tokens, with the draw u in [0, 1) given; params: a "
        "kernelgpt.sample.SamplingParams (temperature, top_k, top_p, min_p, repetition_penalty; "
        "None: no filter); seen: the token ids the repetition penalty applies to; what "
        "Decoder.sample does per row.");
}

}  // namespace kgpt_bind
