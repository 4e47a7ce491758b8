/* heap.h - how message buffers get their memory.
 *
 * Owns: the allocator settings (one malloc arena, large buffers kept on
 * the heap) and faulting in, in one go, the memory a scan is about to use.
 * Why: message buffers come and go by the thousand, and on a virtual
 * machine a page fault costs far more than a system call (measured here:
 * 15 us a page on first touch, 1.6 us with MADV_POPULATE_WRITE).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Call first thing in main, before any thread exists. */
void heap_setup(void);
/* Makes bytes (at most heap_reserve_max()) of heap resident now, with one
 * system call per few MiB, for buffers allocated afterwards.  Best effort:
 * without MADV_POPULATE_WRITE (Linux < 5.14) the pages fault in on use, as
 * without it. */
void heap_reserve(gsize bytes);
gsize heap_reserve_max(void);

G_END_DECLS
