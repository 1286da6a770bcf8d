// The workload's memory layout and the pattern every word of it holds, so that any word can be
// recomputed after a restore without keeping a copy.
#ifndef FAULTLINE_WORKLOAD_PATTERN_H
#define FAULTLINE_WORKLOAD_PATTERN_H

#include <stdint.h>
#include <stddef.h>

#define WL_PAGE 4096UL
#define WL_WORDS_PER_PAGE (WL_PAGE / sizeof(uint64_t))

enum wl_region {
	WL_DENSE,   /* every word written; every 8th page (page % 8 == 3) written twice */
	WL_SPARSE,  /* only pages with page % 4 == 0 written; the others are holes, never touched */
	WL_ZERO,    /* every page written with zeros: present in the image, reads 0 */
	WL_RO,      /* pattern, then PROT_READ; same size as WL_ZERO so the two can be swapped */
	WL_INHERIT, /* the root's, inherited copy-on-write; each process overwrote its own slice */
	WL_NREGIONS
};

extern const char *const wl_region_names[WL_NREGIONS];

/* Generations: 1 first fill, 2 the rewrite before the dump, 3 probe words written after restore. */
#define WL_GEN_FIRST 1
#define WL_GEN_REWRITE 2
#define WL_GEN_PROBE 3

/* The verify action writes a probe word (word 1) into pages with page % 61 == 7 of the writable
 * regions while they are still lazy: a write fault on a page that must keep its other words. */
#define WL_PROBE_WORD 1
#define WL_PROBE_MOD 61
#define WL_PROBE_REM 7

static inline uint64_t wl_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Never 0, so that a page that wrongly reads as zeros is always a mismatch. */
static inline uint64_t wl_pattern(uint64_t seed, unsigned proc, unsigned region, uint64_t word, unsigned gen)
{
	uint64_t key = wl_mix64(seed ^ ((uint64_t)proc << 32) ^ ((uint64_t)region << 48) ^ ((uint64_t)gen << 56));
	uint64_t v = wl_mix64(key ^ (word * 0x9e3779b97f4a7c15ULL));
	return v ? v : 1;
}

/* What the pages of one process must hold: who wrote which page, in which generation. */
struct wl_expect {
	uint64_t seed;
	unsigned proc;       /* tree index of the process whose memory this is */
	unsigned nprocs;
	const uint8_t *on_path; /* [nprocs]: 1 for the process and its ancestors (their inherit slices) */
	int probes;          /* the verify action's probe words were written */
};

/* Page rp of a region: *hole = never written (reads 0); else written by *writer in generation *gen. */
static inline void wl_page_expect(const struct wl_expect *e, unsigned region, uint64_t rp, int *hole, unsigned *writer, unsigned *gen)
{
	*hole = 0;
	*writer = e->proc;
	*gen = WL_GEN_FIRST;
	switch (region) {
	case WL_DENSE:
		if (rp % 8 == 3)
			*gen = WL_GEN_REWRITE;
		break;
	case WL_SPARSE:
		*hole = rp % 4 != 0;
		break;
	case WL_ZERO:
		*hole = 1;
		break;
	case WL_INHERIT: {
		unsigned slice = (unsigned)(rp % e->nprocs);
		*writer = e->on_path[slice] ? slice : 0;
		break;
	}
	default:
		break;
	}
}

static inline int wl_probe_page(const struct wl_expect *e, unsigned region, uint64_t rp)
{
	return e->probes && region != WL_RO && region != WL_INHERIT && rp % WL_PROBE_MOD == WL_PROBE_REM;
}

#endif
