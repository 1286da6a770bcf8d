// One sendmsg with SCM_RIGHTS, shared by unixSend and the drain's hand-off of forked children's
// uffds to the guardian (epoll.cc).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

static const uint32_t kMaxSendFds = 16;

// Sends len bytes of data with up to kMaxSendFds descriptors; sendmsg's result (errno on -1).
ssize_t SendWithFds(int sock, const void *data, size_t len, const int *fds, uint32_t nfds, int flags);
