#pragma once
// CPU emulation stand-in for cuda_fp16.h: the conversions csrc/cuda uses, through GCC's
// _Float16 (IEEE binary16, conversions round to nearest even as __float2half_rn does).

#include <cstring>

struct __half {
  unsigned short x;
};

inline float __half2float(__half h) {
  _Float16 value;
  std::memcpy(&value, &h.x, sizeof(value));
  return static_cast<float>(value);
}
inline __half __float2half_rn(float f) {
  const _Float16 value = static_cast<_Float16>(f);
  __half h;
  std::memcpy(&h.x, &value, sizeof(value));
  return h;
}
inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
