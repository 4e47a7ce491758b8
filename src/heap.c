/* heap.c - allocator settings and bulk fault-in for message buffers.
 *
 * One arena: with glibc's default of one arena per thread (up to 8 per
 * core), a buffer allocated by a read-ahead thread and freed by a FUSE
 * thread goes back to the first thread's arena, and every arena grows to
 * its own peak: peak RSS of a cold grep of 10,000 messages fell from
 * 54 MB to 37 MB, and page faults by a third.  Our allocation rate (a few
 * per message) is far too low for the shared lock to matter.
 * Large buffers on the heap: at glibc's default mmap threshold (128 KiB
 * and up, growing) each large message would be a fresh mmap (page faults,
 * then a munmap with TLB shootdowns) and freed heap would be trimmed and
 * faulted in again.  Memory stays bounded by cache_mem and readahead, so
 * it is kept mapped up to the trim threshold.
 * heap_reserve: freed chunks merge into the top of the heap and stay there
 * (below the trim threshold), so memory faulted in once serves the buffers
 * allocated later without a fault each.
 */
#include "imapfuse/heap.h"

#include <malloc.h>
#include <stdint.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define HEAP_MMAP_THRESHOLD (32u << 20)
#define HEAP_TRIM_THRESHOLD (64u << 20)
#define HEAP_PIECE (4u << 20) /* below the mmap threshold: from the heap */

void heap_setup(void) {
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD);
  mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD);
}

gsize heap_reserve_max(void) { return HEAP_TRIM_THRESHOLD * 3 / 4; }

void heap_reserve(gsize bytes) {
  bytes = MIN(bytes, heap_reserve_max());
  gsize page = (gsize)sysconf(_SC_PAGESIZE);
  GSList *pieces = NULL;
  for (gsize done = 0; done < bytes; done += HEAP_PIECE) {
    char *p = malloc(HEAP_PIECE);
    if (p == NULL)
      break;
    pieces = g_slist_prepend(pieces, p);
    char *a = (char *)(((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1));
    if (madvise(a, (HEAP_PIECE - (gsize)(a - p)) & ~(page - 1), MADV_POPULATE_WRITE) != 0)
      break; /* not supported here: pages fault in on use */
  }
  g_slist_free_full(pieces, free); /* newest first: they merge into the top */
}
