// faultline's native core: one file per kernel facility (uffd, epoll, scm, mmap). No policy, no
// state beyond what a call is handed; errors are JS errors carrying errno names.
#include <napi.h>

void InitUffd(Napi::Env env, Napi::Object exports);
void InitEpoll(Napi::Env env, Napi::Object exports);
void InitScm(Napi::Env env, Napi::Object exports);
void InitMmap(Napi::Env env, Napi::Object exports);
void InitFill(Napi::Env env, Napi::Object exports);

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitUffd(env, exports);
  InitEpoll(env, exports);
  InitScm(env, exports);
  InitMmap(env, exports);
  InitFill(env, exports);
  return exports;
}

NODE_API_MODULE(faultline_native, Init)
