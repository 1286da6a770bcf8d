/*
 * The expected-content table of one restored process: one entry per page it has mapped now, sorted
 * by current address, saying what the page must read as (bytes in a pages file, or zeros).  Every
 * step that moves, grows, shrinks, zaps or unmaps memory updates it the way the kernel changes the
 * mappings, so verification after any steps still knows what each page must hold.  The struct is
 * in target.h because struct pctx holds one; nothing here owns global state.
 *
 * Entries also carry a segment number: pages of one segment that are address-contiguous lie in one
 * kernel VMA, which is what mremap, grow and shrink require of their ranges.
 */
#include "target.h"
#include <stdlib.h>
#include <string.h>

static void tbl_reserve(struct table *t, size_t n)
{
	if (n <= t->cap)
		return;
	t->cap = n + n / 2 + 16;
	t->e = realloc(t->e, t->cap * sizeof(*t->e));
	if (!t->e)
		die(EXIT_NOMEM, "out of memory (page table)");
}

/* The planned layout: every page of every VMA, each VMA its own segment. */
void tbl_init(struct table *t, const struct proc *p)
{
	tbl_reserve(t, p->npages);
	for (int i = 0; i < p->nvma; i++) {
		const struct vma *v = &p->vmas[i];
		for (uint64_t a = v->start; a < v->end; a += PAGE) {
			size_t k = t->n++;
			t->e[k] = (struct ent){ .addr = a, .want = p->expect[v->first + (a - v->start) / PAGE], .seg = i };
		}
	}
	t->next_seg = p->nvma;
}

void tbl_copy(struct table *dst, const struct table *src)
{
	*dst = *src;
	dst->e = malloc((src->cap ? src->cap : 1) * sizeof(*src->e));
	if (!dst->e)
		die(EXIT_NOMEM, "out of memory (page table)");
	memcpy(dst->e, src->e, src->n * sizeof(*src->e));
}

/* Index of the first entry with addr >= a. */
size_t tbl_lb(const struct table *t, uint64_t a)
{
	size_t lo = 0, hi = t->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (t->e[mid].addr < a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

void tbl_span(const struct table *t, uint64_t a, uint64_t b, size_t *lo, size_t *hi)
{
	*lo = tbl_lb(t, a);
	*hi = tbl_lb(t, b);
}

bool tbl_full(const struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	return hi - lo == (b - a) / PAGE;
}

bool tbl_one_seg(const struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	if (hi - lo != (b - a) / PAGE)
		return false;
	for (size_t i = lo + 1; i < hi; i++)
		if (t->e[i].seg != t->e[lo].seg)
			return false;
	return true;
}

bool tbl_empty(const struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	return hi == lo;
}

/* Entries leaving the table keep counting in the process's verification totals. */
static void tbl_retire(struct table *t, size_t lo, size_t hi)
{
	for (size_t i = lo; i < hi; i++)
		if (t->e[i].state) {
			t->ret_verified++;
			t->ret_mismatches += t->e[i].state == 2;
			t->ret_holes += !t->e[i].want;
		}
}

void tbl_remove(struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	tbl_retire(t, lo, hi);
	memmove(t->e + lo, t->e + hi, (t->n - hi) * sizeof(*t->e));
	t->n -= hi - lo;
}

/* Inserts n address-sorted entries into a range that holds none. */
static void tbl_insert(struct table *t, const struct ent *src, size_t n)
{
	size_t at;
	if (!n)
		return;
	tbl_reserve(t, t->n + n);
	at = tbl_lb(t, src[0].addr);
	memmove(t->e + at + n, t->e + at, (t->n - at) * sizeof(*t->e));
	memcpy(t->e + at, src, n * sizeof(*src));
	t->n += n;
}

/* Gives every same-seg run inside [a,b) a fresh seg (the range became a VMA of its own). */
static void tbl_reseg(struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	uint32_t prev_old = 0, cur = 0;
	tbl_span(t, a, b, &lo, &hi);
	for (size_t i = lo; i < hi; i++) {
		if (i == lo || t->e[i].seg != prev_old || t->e[i].addr != t->e[i - 1].addr + PAGE)
			cur = t->next_seg++;
		prev_old = t->e[i].seg;
		t->e[i].seg = cur;
	}
}

void tbl_move(struct table *t, uint64_t a, uint64_t b, uint64_t to)
{
	size_t lo, hi, n;
	struct ent *tmp;
	uint32_t seg = t->next_seg++;
	tbl_span(t, a, b, &lo, &hi);
	n = hi - lo;
	tmp = malloc((n ? n : 1) * sizeof(*tmp));
	if (!tmp)
		die(EXIT_NOMEM, "out of memory (page table)");
	memcpy(tmp, t->e + lo, n * sizeof(*tmp));
	memmove(t->e + lo, t->e + hi, (t->n - hi) * sizeof(*t->e));
	t->n -= n;
	tbl_remove(t, to, to + (b - a)); /* MREMAP_FIXED unmaps whatever was there */
	for (size_t i = 0; i < n; i++) {
		tmp[i].addr = tmp[i].addr - a + to;
		tmp[i].seg = seg;
	}
	tbl_insert(t, tmp, n);
	free(tmp);
}

/* MADV_DONTNEED: the pages stay mapped but must read as zeros from now on. */
void tbl_zap(struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	tbl_retire(t, lo, hi);
	for (size_t i = lo; i < hi; i++) {
		t->e[i].want = NULL;
		t->e[i].state = 0;
		t->e[i].touched = 0;
	}
	/* The daemon unregisters a removed range, which splits the VMA. */
	tbl_reseg(t, a, b);
}

/* n zero pages after b, in the segment of the page before b (mremap grew that VMA in place). */
void tbl_grow(struct table *t, uint64_t b, uint64_t n)
{
	size_t at = tbl_lb(t, b);
	uint32_t seg = at ? t->e[at - 1].seg : 0;
	struct ent *tmp = calloc(n, sizeof(*tmp));
	if (!tmp)
		die(EXIT_NOMEM, "out of memory (page table)");
	for (uint64_t i = 0; i < n; i++) {
		tmp[i].addr = b + i * PAGE;
		tmp[i].seg = seg;
	}
	tbl_insert(t, tmp, n);
	free(tmp);
}

/*
 * A run of len bytes in [lo,hi) that holds no entry, searched from `from` and wrapping round to
 * lo; 0 if there is none.  Used to find room in the spare area.
 */
uint64_t tbl_gap(const struct table *t, uint64_t lo, uint64_t hi, uint64_t len, uint64_t from)
{
	for (int pass = 0; pass < 2; pass++) {
		uint64_t x = pass ? lo : from, end = pass ? from + len : hi;
		if (end > hi)
			end = hi;
		while (x + len <= end) {
			size_t l, h;
			tbl_span(t, x, x + len, &l, &h);
			if (l == h)
				return x;
			x = t->e[h - 1].addr + PAGE;
		}
	}
	return 0;
}
