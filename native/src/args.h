#pragma once
#include <napi.h>
#include <stdint.h>

// Addresses and lengths cross N-API as doubles: user-space addresses on x86_64 are < 2^47, so they
// are exact. 64-bit feature masks cross as BigInt (see DESIGN.md pitfalls).
inline uint64_t ArgU64(const Napi::CallbackInfo &info, size_t i) {
  return (uint64_t)info[i].As<Napi::Number>().Int64Value();
}
inline int ArgInt(const Napi::CallbackInfo &info, size_t i) {
  return info[i].As<Napi::Number>().Int32Value();
}
inline bool CheckArgs(const Napi::CallbackInfo &info, size_t n, const char *fn) {
  if (info.Length() < n) {
    Napi::TypeError::New(info.Env(), std::string(fn) + ": expected " + std::to_string(n) + " arguments")
        .ThrowAsJavaScriptException();
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    if (!info[i].IsNumber() && !info[i].IsBuffer() && !info[i].IsBigInt() && !info[i].IsString() &&
        !info[i].IsArray() && !info[i].IsFunction() && !info[i].IsArrayBuffer()) {
      Napi::TypeError::New(info.Env(), std::string(fn) + ": bad argument " + std::to_string(i))
          .ThrowAsJavaScriptException();
      return false;
    }
  }
  return true;
}
