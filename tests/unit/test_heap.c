/* test_heap.c - heap_reserve: memory faulted in ahead serves buffers
 * allocated afterwards without a page fault each.
 *
 * Built without sanitizers (tests/unit/meson.build): ASan replaces malloc,
 * and what is tested here is glibc's heap.  Runs before any other thread
 * exists, as heap_setup() requires.
 */
#include "imapfuse/heap.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define HT_BYTES (8u << 20)
#define HT_PIECE (128u << 10)

static long ht_minflt(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

/* Allocate HT_BYTES in pieces, write every page; the faults it took. */
static long ht_fill(char **pieces, guint n) {
  long before = ht_minflt();
  for (guint i = 0; i < n; i++) {
    pieces[i] = g_malloc(HT_PIECE);
    memset(pieces[i], 0x5a, HT_PIECE);
  }
  return ht_minflt() - before;
}

static gboolean ht_populate_works(void) {
  gsize n = 4 * (gsize)sysconf(_SC_PAGESIZE);
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  g_assert_true(p != MAP_FAILED);
  int r = madvise(p, n, MADV_POPULATE_WRITE);
  munmap(p, n);
  return r == 0;
}

static void test_fresh_memory_faults(void) {
  /* The control: the counter does count first touches. */
  long pages = HT_BYTES / sysconf(_SC_PAGESIZE);
  char *p = mmap(NULL, HT_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  g_assert_true(p != MAP_FAILED);
  long before = ht_minflt();
  for (gsize off = 0; off < HT_BYTES; off += 4096)
    p[off] = 1;
  long faults = ht_minflt() - before;
  munmap(p, HT_BYTES);
  g_assert_cmpint(faults, >=, pages / 2);
}

static void test_reserved_heap_needs_no_faults(void) {
  if (!ht_populate_works()) {
    g_test_skip("MADV_POPULATE_WRITE not supported by this kernel (Linux >= 5.14)");
    return;
  }
  long pages = HT_BYTES / sysconf(_SC_PAGESIZE);
  heap_reserve(HT_BYTES + (4u << 20));
  guint n = HT_BYTES / HT_PIECE;
  char **pieces = g_new0(char *, n);
  long faults = ht_fill(pieces, n);
  for (guint i = 0; i < n; i++)
    g_free(pieces[i]);
  g_free(pieces);
  /* Without the reservation this is one fault per page (>= 2048). */
  g_assert_cmpint(faults, <, pages / 8);
}

static void test_reserve_is_bounded(void) {
  /* A huge cache_mem must not pin that much: the reservation stops at
   * heap_reserve_max(), below the trim threshold that keeps it. */
  g_assert_cmpuint(heap_reserve_max(), <=, 64u << 20);
  g_assert_cmpuint(heap_reserve_max(), >=, 16u << 20);
  long before = ht_minflt();
  heap_reserve(G_MAXSIZE / 2);
  long pages = (long)(heap_reserve_max() / (gsize)sysconf(_SC_PAGESIZE));
  g_assert_cmpint(ht_minflt() - before, <=, pages + 64);
}

int main(int argc, char **argv) {
  heap_setup();
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/heap/fresh-memory-faults", test_fresh_memory_faults);
  g_test_add_func("/heap/reserved-heap-needs-no-faults", test_reserved_heap_needs_no_faults);
  g_test_add_func("/heap/reserve-is-bounded", test_reserve_is_bounded);
  return g_test_run();
}
