/*
 * A restored process's memory, set up as CRIU's restorer leaves it before the hand-over: the
 * plan's VMAs mapped at their dump-time addresses, the non-lazy pages filled eagerly, the lazy ones
 * left missing behind a userfaultfd.  Plus the spare area that steps move memory into.  Runs in
 * the restored process; owns no global state.
 */
#include "target.h"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Debian bookworm ships 6.1 headers; the machine runs a newer kernel. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* The features CRIU asks for; anything else would change what the daemon sees. */
#define WANTED_FEATURES                                                             \
	(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | \
	 UFFD_FEATURE_EVENT_UNMAP)

/* A taken address is EXIT_OVERLAP: with ASLR the next attempt may find it free. */
void map_vmas(const struct proc *p)
{
	for (int i = 0; i < p->nvma; i++) {
		const struct vma *v = &p->vmas[i];
		size_t len = v->end - v->start;
		void *m = mmap((void *)(uintptr_t)v->start, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (m == MAP_FAILED && errno != EEXIST)
			die(EXIT_OVERLAP, "pid %d: mmap vma %" PRIx64 "-%" PRIx64 ": %s", p->pid, v->start, v->end,
			    strerror(errno));
		/* Kernels before 4.17 treat the flag as a hint and map elsewhere. */
		if (m != MAP_FAILED && m != (void *)(uintptr_t)v->start)
			munmap(m, len);
		if (m != (void *)(uintptr_t)v->start)
			die(EXIT_OVERLAP, "pid %d: vma %" PRIx64 "-%" PRIx64 " overlaps an existing mapping", p->pid, v->start,
			    v->end);
	}
	for (int i = 0; i < p->nrun; i++) {
		const struct plan_run *r = &p->runs[i];
		if (!r->lazy)
			memcpy((void *)(uintptr_t)r->vaddr, plan.files[r->file].base + r->off, r->npages * PAGE);
	}
}

void map_spare(struct pctx *c)
{
	const struct proc *p = c->p;
	uint64_t pages = p->npages > 256 ? p->npages : 256;
	uint64_t want = p->nvma ? p->vmas[p->nvma - 1].end : 0;
	void *m = MAP_FAILED;
	c->spare_len = pages * PAGE;
	if (want)
		m = mmap((void *)(uintptr_t)want, c->spare_len, PROT_NONE, RESERVE_FLAGS | MAP_FIXED_NOREPLACE, -1, 0);
	if (m != MAP_FAILED && m != (void *)(uintptr_t)want) {
		munmap(m, c->spare_len);
		m = MAP_FAILED;
	}
	if (m == MAP_FAILED)
		m = mmap(NULL, c->spare_len, PROT_NONE, RESERVE_FLAGS, -1, 0);
	if (m == MAP_FAILED)
		die(EXIT_UFFD, "pid %d: reserve spare area: %s", p->pid, strerror(errno));
	c->spare = (uintptr_t)m;
}

/* A userfaultfd with CRIU's features, registered for missing pages on every planned VMA. */
int make_uffd(const struct proc *p)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	uint64_t offered;
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);

	if (fd < 0)
		die(EXIT_UFFD, "pid %d: userfaultfd: %s", p->pid, strerror(errno));
	/* UFFDIO_API may be done once per uffd, so the probe needs a throwaway one. */
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		die(EXIT_UFFD, "pid %d: UFFDIO_API probe: %s", p->pid, strerror(errno));
	offered = api.features;
	close(fd);

	fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		die(EXIT_UFFD, "pid %d: userfaultfd: %s", p->pid, strerror(errno));
	api = (struct uffdio_api){ .api = UFFD_API, .features = offered & WANTED_FEATURES };
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		die(EXIT_UFFD, "pid %d: UFFDIO_API features 0x%llx: %s", p->pid, (unsigned long long)(offered & WANTED_FEATURES),
		    strerror(errno));
	for (int i = 0; i < p->nvma; i++) {
		const struct vma *v = &p->vmas[i];
		/* What the daemon will use to serve; a VMA without them could not be served at all. */
		const uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) | (1ull << _UFFDIO_WAKE);
		struct uffdio_register reg = {
			.range = { .start = v->start, .len = v->end - v->start },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
			die(EXIT_UFFD, "pid %d: UFFDIO_REGISTER %" PRIx64 "-%" PRIx64 ": %s", p->pid, v->start, v->end,
			    strerror(errno));
		if ((reg.ioctls & need) != need)
			die(EXIT_UFFD, "pid %d: vma %" PRIx64 "-%" PRIx64 " lacks COPY/ZEROPAGE/WAKE (ioctls 0x%llx)", p->pid,
			    v->start, v->end, (unsigned long long)reg.ioctls);
	}
	return fd;
}
