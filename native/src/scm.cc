// AF_UNIX stream sockets with SCM_RIGHTS (the uffd hand-over) and SCM_CREDENTIALS (the sender's pid
// as seen from our namespace, which is what we signal in a fail-stop), plus pidfds.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <string>
#include <vector>
#include <napi.h>
#include "args.h"
#include "errors.h"
#include "scm.h"

static bool FillAddr(Napi::Env env, const std::string &path, struct sockaddr_un *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (path.size() >= sizeof sa->sun_path) {
    Napi::Error e = ErrnoError(env, "bind", ENAMETOOLONG);
    e.Set("message", Napi::String::New(env, "unix socket path is longer than 107 bytes: " + path));
    e.ThrowAsJavaScriptException();
    return false;
  }
  memcpy(sa->sun_path, path.data(), path.size());
  return true;
}

static void EnablePassCred(int fd) {
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
}

// unixListen(path, backlog) -> fd. Non-blocking, mode 0600; any stale socket file is replaced, as
// CRIU does (a live daemon's is not: the work-dir lock, lockFile, is taken first).
static Napi::Value Listen(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 2, "unixListen")) return env.Undefined();
  std::string path = info[0].As<Napi::String>();
  struct sockaddr_un sa;
  if (!FillAddr(env, path, &sa)) return env.Undefined();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  EnablePassCred(fd);
  unlink(path.c_str());
  // 0600 whatever the umask: a peer that can connect can hand over a uffd and be sent the
  // checkpoint's memory. The mode of an unbound socket's inode is what bind() gives its file (minus
  // the umask), so the file never exists with a wider mode; the chmod covers filesystems that differ.
  fchmod(fd, 0600);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(path.c_str(), 0600) < 0 || listen(fd, ArgInt(info, 1)) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "bind/listen", err);
  }
  return Napi::Number::New(env, fd);
}

static Napi::Object PeerCred(Napi::Env env, int fd) {
  struct ucred cred = {};
  socklen_t len = sizeof cred;
  getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
  Napi::Object r = Napi::Object::New(env);
  r.Set("fd", fd);
  r.Set("pid", (int)cred.pid);
  r.Set("uid", (double)cred.uid);
  r.Set("gid", (double)cred.gid);
  return r;
}

// unixAccept(fd) -> { fd, pid, uid, gid } of the peer, or null when no connection is pending.
static Napi::Value Accept(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = accept4(ArgInt(info, 0), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EINTR) return env.Null();
    return ThrowErrno(env, "accept", errno);
  }
  EnablePassCred(fd);
  return PeerCred(env, fd);
}

// unixPeer(fd) -> { fd, pid, uid, gid }: a connection accepted elsewhere (by the guardian), made ready to
// read as one from unixAccept is.
static Napi::Value Peer(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 1, "unixPeer")) return info.Env().Undefined();
  int fd = ArgInt(info, 0);
  EnablePassCred(fd);
  return PeerCred(info.Env(), fd);
}

struct Received {
  ssize_t n;
  std::vector<int> fds;
  int pid;
  bool truncated;
};

static Received RecvOnce(int fd, char *buf, size_t len, int flags) {
  union {
    char space[CMSG_SPACE(sizeof(int) * 16) + CMSG_SPACE(sizeof(struct ucred))];
    struct cmsghdr align;
  } control;
  struct iovec iov = {buf, len};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.space;
  msg.msg_controllen = sizeof control.space;
  Received r{recvmsg(fd, &msg, flags | MSG_CMSG_CLOEXEC), {}, 0, false};
  if (r.n < 0) return r;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    if (c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int got;
        memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
        r.fds.push_back(got);
      }
    } else if (c->cmsg_type == SCM_CREDENTIALS) {
      struct ucred cred;
      memcpy(&cred, CMSG_DATA(c), sizeof cred);
      r.pid = cred.pid;
    }
  }
  r.truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  return r;
}

// Hands each received uffd to the guardian as ADD {1, uffd, sender pid} + [uffd, pidfd].
static void GuardHandover(const Received &r) {
  for (int fd : r.fds) {
    int pidfd = r.pid > 0 ? (int)syscall(SYS_pidfd_open, r.pid, 0) : -1;
    int pass[2] = {fd, pidfd};
    uint32_t msg[3] = {1 /* ADD */, (uint32_t)fd, (uint32_t)r.pid};
    SendWithFds(guardian_fd, msg, sizeof msg, pass, pidfd >= 0 ? 2 : 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (pidfd >= 0) close(pidfd);
  }
}

// unixRecv(fd, maxBytes, guard?) -> { data: Buffer, fds: number[], pid } or null if nothing is
// pending. data.length == 0 means EOF. pid is the sender's pid from SCM_CREDENTIALS (0 if none came).
// guard (the restorer's connection): every uffd reaches the guardian before it leaves the socket. The
// message is peeked first (the kernel installs copies of its fds), the copies go to the guardian, and
// only then is it consumed; a daemon killed at any moment leaves each uffd either in the socket,
// where the guardian takes it, or with the guardian.
static Napi::Value Recv(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 2, "unixRecv")) return env.Undefined();
  int fd = ArgInt(info, 0);
  size_t max = (size_t)ArgInt(info, 1);
  bool guard = info.Length() > 2 && info[2].ToBoolean() && guardian_fd >= 0;
  std::string buf(max ? max : 1, '\0');
  Received r = RecvOnce(fd, &buf[0], buf.size(), guard ? MSG_PEEK : 0);
  if (r.n < 0) {
    if (errno == EAGAIN || errno == EINTR) return env.Null();
    return ThrowErrno(env, "recvmsg", errno);
  }
  if (guard && r.n > 0) {
    GuardHandover(r);
    // The same bytes again, consumed: one reader, so the same messages, whose fds are copies of the
    // peeked ones (kept: the guardian knows them by these numbers).
    Received taken = RecvOnce(fd, &buf[0], (size_t)r.n, 0);
    for (int dup : taken.fds) close(dup);
    if (taken.n != r.n || taken.fds.size() != r.fds.size()) {
      for (int kept : r.fds) close(kept);
      return ThrowErrno(env, "recvmsg (after MSG_PEEK)", taken.n < 0 ? errno : EPROTO);
    }
  }
  Napi::Array fds = Napi::Array::New(env);
  for (int got : r.fds) fds.Set(fds.Length(), got);
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Buffer<char>::Copy(env, buf.data(), (size_t)r.n));
  out.Set("fds", fds);
  out.Set("pid", r.pid);
  out.Set("truncated", Napi::Boolean::New(env, r.truncated));
  return out;
}

// lockFile(path) -> fd holding an exclusive flock on path (created 0600), or throws with code
// EWOULDBLOCK when another process holds it. The lock goes with the process, however it ends.
static Napi::Value LockFile(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 1, "lockFile")) return env.Undefined();
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ThrowErrno(env, "open", errno);
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "flock", err);
  }
  return Napi::Number::New(env, fd);
}

// unixConnect(path, seqpacket?) -> fd (blocking). For tests and tools that play the restorer, and
// for a resuming daemon reaching its guardian (SOCK_SEQPACKET).
static Napi::Value Connect(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  bool seqpacket = info.Length() > 1 && info[1].ToBoolean();
  struct sockaddr_un sa;
  if (!FillAddr(env, path, &sa)) return env.Undefined();
  int fd = socket(AF_UNIX, (seqpacket ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "connect", err);
  }
  return Napi::Number::New(env, fd);
}

ssize_t SendWithFds(int sock, const void *data, size_t len, const int *fds, uint32_t nfds, int flags) {
  union {
    char space[CMSG_SPACE(sizeof(int) * kMaxSendFds)];
    struct cmsghdr align;
  } control;
  struct iovec iov = {const_cast<void *>(data), len};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > kMaxSendFds) nfds = kMaxSendFds;
  if (nfds) {
    msg.msg_control = control.space;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  return sendmsg(sock, &msg, flags);
}

// unixSend(fd, data: Buffer, fds: number[]) -> bytes sent.
static Napi::Value Send(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 3, "unixSend")) return env.Undefined();
  Napi::Buffer<char> data = info[1].As<Napi::Buffer<char>>();
  Napi::Array arr = info[2].As<Napi::Array>();
  int fds[kMaxSendFds];
  uint32_t nfds = arr.Length() > kMaxSendFds ? kMaxSendFds : arr.Length();
  for (uint32_t i = 0; i < nfds; i++) fds[i] = arr.Get(i).As<Napi::Number>().Int32Value();
  ssize_t n = SendWithFds(ArgInt(info, 0), data.Data(), data.Length(), fds, nfds, MSG_NOSIGNAL);
  if (n < 0) return ThrowErrno(env, "sendmsg", errno);
  return Napi::Number::New(env, (double)n);
}

// unixSocketpair() -> [a, b]: a SOCK_SEQPACKET pair (close-on-exec; a child given one end through
// its stdio gets a copy without the flag). The daemon's control line to its guardian.
static Napi::Value Socketpair(const Napi::CallbackInfo &info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return ThrowErrno(info.Env(), "socketpair", errno);
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  out.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return out;
}

// fdAccessMode(fd) -> O_RDONLY / O_WRONLY / O_RDWR of an open fd (throws EBADF when it is not).
static Napi::Value FdAccessMode(const Napi::CallbackInfo &info) {
  int fl = fcntl(ArgInt(info, 0), F_GETFL);
  if (fl < 0) return ThrowErrno(info.Env(), "fcntl", errno);
  return Napi::Number::New(info.Env(), fl & O_ACCMODE);
}

static Napi::Value Close(const Napi::CallbackInfo &info) {
  if (close(ArgInt(info, 0)) < 0) return ThrowErrno(info.Env(), "close", errno);
  return info.Env().Undefined();
}

static Napi::Value Shutdown(const Napi::CallbackInfo &info) {
  shutdown(ArgInt(info, 0), SHUT_RDWR);
  return info.Env().Undefined();
}

static Napi::Value PidfdOpen(const Napi::CallbackInfo &info) {
  int fd = (int)syscall(SYS_pidfd_open, ArgInt(info, 0), 0);
  if (fd < 0) return ThrowErrno(info.Env(), "pidfd_open", errno);
  return Napi::Number::New(info.Env(), fd);
}

static Napi::Value PidfdSendSignal(const Napi::CallbackInfo &info) {
  if (syscall(SYS_pidfd_send_signal, ArgInt(info, 0), ArgInt(info, 1), nullptr, 0) < 0)
    return ThrowErrno(info.Env(), "pidfd_send_signal", errno);
  return info.Env().Undefined();
}

void InitScm(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, Listen));
  exports.Set("lockFile", Napi::Function::New(env, LockFile));
  exports.Set("fdAccessMode", Napi::Function::New(env, FdAccessMode));
  exports.Set("unixAccept", Napi::Function::New(env, Accept));
  exports.Set("unixPeer", Napi::Function::New(env, Peer));
  exports.Set("unixRecv", Napi::Function::New(env, Recv));
  exports.Set("unixConnect", Napi::Function::New(env, Connect));
  exports.Set("unixSend", Napi::Function::New(env, Send));
  exports.Set("unixSocketpair", Napi::Function::New(env, Socketpair));
  exports.Set("closeFd", Napi::Function::New(env, Close));
  exports.Set("shutdownFd", Napi::Function::New(env, Shutdown));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pidfdSendSignal", Napi::Function::New(env, PidfdSendSignal));
}
