// One sendmsg with SCM_RIGHTS, shared by unixSend and the hand-offs of uffds to the guardian: forked
// children's from the drain (epoll.cc), handed-over ones from unixRecv (scm.cc).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

static const uint32_t kMaxSendFds = 16;

// Sends len bytes of data with up to kMaxSendFds descriptors; sendmsg's result (errno on -1).
ssize_t SendWithFds(int sock, const void *data, size_t len, const int *fds, uint32_t nfds, int flags);

// The guardian's control socket (native/guardian/guardian.c; set by setGuardian in epoll.cc), or -1.
extern int guardian_fd;
