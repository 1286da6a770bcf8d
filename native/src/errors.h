#pragma once
#include <napi.h>

// Errors cross into JS as Error objects with code = errno name ("ESRCH"), errno and syscall, so
// policy in TypeScript can switch on the name instead of on numbers.
Napi::Error ErrnoError(Napi::Env env, const char *syscall, int err);
const char *ErrnoName(int err);
Napi::Value ThrowErrno(Napi::Env env, const char *syscall, int err);
double MonotonicNs();
