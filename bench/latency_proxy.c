/* latency_proxy.c - loopback TCP proxy that adds a fixed one-way delay.
 *
 *   latency_proxy --target-port 12345 [--delay-ms 10] [--port-file F]
 *                 [--listen-port 0] [--log FILE] [--max-seconds 7200]
 *
 * Listens on 127.0.0.1:<free port> (or --listen-port) and forwards each
 * connection to 127.0.0.1:<target-port> (--listen-host/--target-host may be
 * ::1; only loopback addresses are accepted).  Every chunk read from one
 * side is timestamped on arrival and written to the other side `delay`
 * later: a delay, not a bandwidth cap.  A reader thread per direction keeps
 * pulling while a writer thread releases chunks as they come due, so data
 * in flight keeps flowing and throughput is that of the direct path; order
 * is preserved (one FIFO per direction).  10 ms each way = 20 ms round
 * trip; writers sleep on CLOCK_MONOTONIC condition timeouts (microsecond
 * resolution), so the overhead is a few tens of microseconds per hop.
 *
 * Written in C rather than Python: a Python proxy added ~0.7 ms to every
 * round trip and took CPU from the programs being measured on a 2-core
 * machine.
 *
 * Half-closes are forwarded (after the delay).  Connections are served
 * concurrently (four threads each), up to --max-connections.  At most
 * --max-buffer bytes wait per direction (its reader pauses beyond that).
 * Prints "LISTEN <host> <port>" on stdout once ready.  With --log FILE, one
 * JSON line per closed connection (bytes each way, seconds).  Stops
 * cleanly on SIGTERM/SIGINT/SIGHUP, and by itself after --max-seconds.
 *
 * Build: cc -O2 -Wall -Wextra -pthread latency_proxy.c -o latency_proxy
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

typedef struct Chunk {
  struct Chunk *next;
  int64_t due_ns; /* CLOCK_MONOTONIC */
  size_t len;     /* 0 = end of stream */
  char data[];
} Chunk;

struct Conn;

typedef struct {
  struct Conn *conn;
  int src, dst;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  Chunk *head, *tail;
  Chunk *spare; /* sent chunks kept for the reader: no malloc, page faults or copy per chunk */
  size_t queued;
  uint64_t bytes; /* written to dst */
} Dir;

typedef struct Conn {
  unsigned id;
  int cfd, sfd;
  Dir up, down;
  volatile int closing;
  int threads_left; /* under g_mu */
  int64_t t0_ns;
  struct Conn *next; /* in g_conns */
} Conn;

static struct {
  const char *listen_host, *target_host, *port_file, *log;
  int listen_port, target_port, max_connections;
  double delay_ms, max_seconds;
  size_t max_buffer;
} opt = {"127.0.0.1", "127.0.0.1", NULL, NULL, 0, 0, 500, 10.0, 7200.0, 64u << 20};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static Conn *g_conns;
static int g_nconns;
static unsigned g_next_id;
static int64_t g_delay_ns;
static volatile sig_atomic_t g_stop;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "latency_proxy: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec ns_to_ts(int64_t ns) {
  struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
  return ts;
}

/* Parses a numeric loopback address into ss; returns its length or 0. */
static socklen_t loopback_addr(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    if ((ntohl(s4->sin_addr.s_addr) >> 24) != 127)
      return 0;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    return sizeof *s4;
  }
  if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr))
      return 0;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    return sizeof *s6;
  }
  return 0;
}

static void conn_close(Conn *c) {
  c->closing = 1;
  shutdown(c->cfd, SHUT_RDWR);
  shutdown(c->sfd, SHUT_RDWR);
  Dir *ds[2] = {&c->up, &c->down};
  for (int i = 0; i < 2; i++) {
    pthread_mutex_lock(&ds[i]->mu);
    pthread_cond_broadcast(&ds[i]->cv);
    pthread_mutex_unlock(&ds[i]->mu);
  }
}

static void conn_log(Conn *c) {
  if (opt.log == NULL)
    return;
  FILE *f = fopen(opt.log, "a");
  if (f == NULL)
    return;
  struct timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  fprintf(f,
          "{\"conn\": %u, \"client_to_server\": %llu, \"server_to_client\": %llu, "
          "\"seconds\": %.3f, \"closed_at\": %.3f}\n",
          c->id, (unsigned long long)c->up.bytes, (unsigned long long)c->down.bytes,
          (double)(now_ns() - c->t0_ns) / 1e9, (double)wall.tv_sec + wall.tv_nsec / 1e9);
  fclose(f);
}

static void chunks_free(Chunk *k) {
  while (k) {
    Chunk *n = k->next;
    free(k);
    k = n;
  }
}

/* Called by each of the four threads as it ends; the last one frees. */
static void conn_thread_done(Conn *c) {
  pthread_mutex_lock(&g_mu);
  int last = --c->threads_left == 0;
  if (last) {
    for (Conn **pp = &g_conns; *pp; pp = &(*pp)->next)
      if (*pp == c) {
        *pp = c->next;
        break;
      }
    g_nconns--;
    conn_log(c);
    pthread_cond_broadcast(&g_cv);
  }
  pthread_mutex_unlock(&g_mu);
  if (!last)
    return;
  close(c->cfd);
  close(c->sfd);
  Dir *ds[2] = {&c->up, &c->down};
  for (int i = 0; i < 2; i++) {
    chunks_free(ds[i]->head);
    chunks_free(ds[i]->spare);
    pthread_mutex_destroy(&ds[i]->mu);
    pthread_cond_destroy(&ds[i]->cv);
  }
  free(c);
}

static void dir_push(Dir *d, Chunk *k) {
  pthread_mutex_lock(&d->mu);
  k->next = NULL;
  if (d->tail)
    d->tail->next = k;
  else
    d->head = k;
  d->tail = k;
  d->queued += k->len;
  pthread_cond_broadcast(&d->cv);
  /* back-pressure only: bounded waits so a stop is noticed */
  while (d->queued >= opt.max_buffer && !d->conn->closing) {
    struct timespec ts = ns_to_ts(now_ns() + 500000000);
    pthread_cond_timedwait(&d->cv, &d->mu, &ts);
  }
  pthread_mutex_unlock(&d->mu);
}

/* A chunk of CHUNK bytes: a spare one if the writer has sent one. */
static Chunk *dir_chunk(Dir *d) {
  pthread_mutex_lock(&d->mu);
  Chunk *k = d->spare;
  if (k != NULL)
    d->spare = k->next;
  pthread_mutex_unlock(&d->mu);
  return k != NULL ? k : malloc(sizeof *k + CHUNK);
}

static void *reader_main(void *arg) {
  Dir *d = arg;
  /* The proxy stands for a network, which costs the measured programs no
   * CPU: bytes are received straight into the chunk that queues them
   * (no copy), and chunks are reused (a fresh 256 KiB malloc is an mmap
   * and 64 page faults).  It took 0.67 core-s of a cold grep through it. */
  while (!d->conn->closing) {
    Chunk *k = dir_chunk(d);
    if (k == NULL)
      break;
    ssize_t n = recv(d->src, k->data, CHUNK, 0);
    if (n <= 0) {
      free(k);
      if (n < 0 && errno == EINTR)
        continue;
      break;
    }
    k->due_ns = now_ns() + g_delay_ns;
    k->len = (size_t)n;
    dir_push(d, k);
  }
  Chunk *eof = malloc(sizeof *eof);
  if (eof != NULL) {
    eof->due_ns = now_ns() + g_delay_ns;
    eof->len = 0;
    dir_push(d, eof);
  } else {
    conn_close(d->conn);
  }
  conn_thread_done(d->conn);
  return NULL;
}

static void *writer_main(void *arg) {
  Dir *d = arg;
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* wake on time, not up to 50 us late */
  for (;;) {
    pthread_mutex_lock(&d->mu);
    Chunk *k = NULL;
    while (!d->conn->closing) {
      if (d->head != NULL) {
        int64_t t = now_ns();
        if (d->head->due_ns <= t) {
          k = d->head;
          d->head = k->next;
          if (d->head == NULL)
            d->tail = NULL;
          break;
        }
        struct timespec ts = ns_to_ts(d->head->due_ns);
        pthread_cond_timedwait(&d->cv, &d->mu, &ts);
      } else {
        struct timespec ts = ns_to_ts(now_ns() + 1000000000);
        pthread_cond_timedwait(&d->cv, &d->mu, &ts);
      }
    }
    pthread_mutex_unlock(&d->mu);
    if (k == NULL)
      break; /* closing */
    if (k->len == 0) {
      free(k);
      shutdown(d->dst, SHUT_WR);
      break;
    }
    size_t off = 0;
    int failed = 0;
    while (off < k->len) {
      ssize_t w = send(d->dst, k->data + off, k->len - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0) {
        failed = 1;
        break;
      }
      off += (size_t)w;
    }
    pthread_mutex_lock(&d->mu);
    d->bytes += off;
    d->queued -= k->len;
    k->next = d->spare;
    d->spare = k;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    if (failed) {
      conn_close(d->conn);
      break;
    }
  }
  conn_thread_done(d->conn);
  return NULL;
}

static void dir_init(Dir *d, Conn *c, int src, int dst) {
  d->conn = c;
  d->src = src;
  d->dst = dst;
  pthread_mutex_init(&d->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&d->cv, &ca);
  pthread_condattr_destroy(&ca);
}

static void start_conn(int cfd) {
  struct sockaddr_storage ss;
  socklen_t sl = loopback_addr(opt.target_host, opt.target_port, &ss);
  int sfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sfd < 0 || connect(sfd, (struct sockaddr *)&ss, sl) != 0) {
    fprintf(stderr, "latency_proxy: connect to target failed: %s\n", strerror(errno));
    if (sfd >= 0)
      close(sfd);
    close(cfd);
    return;
  }
  int one = 1;
  setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Conn *c = calloc(1, sizeof *c);
  if (c == NULL) {
    close(cfd);
    close(sfd);
    return;
  }
  c->cfd = cfd;
  c->sfd = sfd;
  c->t0_ns = now_ns();
  dir_init(&c->up, c, cfd, sfd);
  dir_init(&c->down, c, sfd, cfd);
  c->threads_left = 4;
  pthread_mutex_lock(&g_mu);
  c->id = ++g_next_id;
  c->next = g_conns;
  g_conns = c;
  g_nconns++;
  pthread_mutex_unlock(&g_mu);
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&at, 256 * 1024);
  void *(*fns[4])(void *) = {reader_main, writer_main, reader_main, writer_main};
  Dir *args[4] = {&c->up, &c->up, &c->down, &c->down};
  for (int i = 0; i < 4; i++) {
    pthread_t t;
    if (pthread_create(&t, &at, fns[i], args[i]) != 0) {
      /* account for the threads that will never run */
      fprintf(stderr, "latency_proxy: cannot start a thread\n");
      conn_close(c);
      for (int j = i; j < 4; j++)
        conn_thread_done(c);
      break;
    }
  }
  pthread_attr_destroy(&at);
}

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

static void usage(void) {
  fprintf(stderr,
          "usage: latency_proxy --target-port PORT [--delay-ms 10] [--listen-port 0]\n"
          "       [--listen-host 127.0.0.1] [--target-host 127.0.0.1] [--port-file F]\n"
          "       [--log F] [--max-seconds 7200] [--max-connections 500] [--max-buffer BYTES]\n");
  exit(2);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL)
      usage();
    if (strcmp(a, "--target-port") == 0)
      opt.target_port = atoi(v);
    else if (strcmp(a, "--listen-port") == 0)
      opt.listen_port = atoi(v);
    else if (strcmp(a, "--target-host") == 0)
      opt.target_host = v;
    else if (strcmp(a, "--listen-host") == 0)
      opt.listen_host = v;
    else if (strcmp(a, "--delay-ms") == 0)
      opt.delay_ms = atof(v);
    else if (strcmp(a, "--port-file") == 0)
      opt.port_file = v;
    else if (strcmp(a, "--log") == 0)
      opt.log = v;
    else if (strcmp(a, "--max-seconds") == 0)
      opt.max_seconds = atof(v);
    else if (strcmp(a, "--max-connections") == 0)
      opt.max_connections = atoi(v);
    else if (strcmp(a, "--max-buffer") == 0)
      opt.max_buffer = (size_t)atoll(v);
    else
      usage();
    i++;
  }
  if (opt.target_port <= 0 || opt.target_port > 65535 || opt.listen_port < 0 ||
      opt.listen_port > 65535)
    usage();
  if (!(opt.delay_ms >= 0 && opt.delay_ms <= 10000))
    die("--delay-ms must be 0 to 10000");
  if (!(opt.max_seconds > 0 && opt.max_seconds <= 7 * 86400))
    die("--max-seconds must be > 0 and at most a week");
  if (opt.max_connections < 1 || opt.max_connections > 10000 || opt.max_buffer < CHUNK)
    die("bad --max-connections or --max-buffer");
  struct sockaddr_storage ss;
  if (loopback_addr(opt.target_host, opt.target_port, &ss) == 0)
    die("only numeric loopback addresses are allowed, not %s", opt.target_host);
  socklen_t sl = loopback_addr(opt.listen_host, opt.listen_port, &ss);
  if (sl == 0)
    die("only numeric loopback addresses are allowed, not %s", opt.listen_host);
  g_delay_ns = (int64_t)(opt.delay_ms * 1e6);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  /* worker threads inherit this mask: signals go to the main thread */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGHUP);

  int ls = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ls < 0 || bind(ls, (struct sockaddr *)&ss, sl) != 0 || listen(ls, 256) != 0)
    die("cannot listen on %s:%d: %s", opt.listen_host, opt.listen_port, strerror(errno));
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  getsockname(ls, (struct sockaddr *)&bound, &bl);
  int port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                              : ((struct sockaddr_in6 *)&bound)->sin6_port);
  if (opt.port_file != NULL) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", opt.port_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 ||
        rename(tmp, opt.port_file) != 0)
      die("cannot write %s", opt.port_file);
  }
  printf("LISTEN %s %d\n", opt.listen_host, port);
  fflush(stdout);

  int64_t deadline = now_ns() + (int64_t)(opt.max_seconds * 1e9);
  while (!g_stop) {
    if (now_ns() > deadline) {
      fprintf(stderr, "latency_proxy: --max-seconds reached, stopping\n");
      break;
    }
    struct pollfd p = {.fd = ls, .events = POLLIN};
    int r = poll(&p, 1, 200);
    if (r <= 0)
      continue;
    int cfd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0)
      continue;
    pthread_mutex_lock(&g_mu);
    int full = g_nconns >= opt.max_connections;
    pthread_mutex_unlock(&g_mu);
    if (full) {
      fprintf(stderr, "latency_proxy: too many connections, refusing one\n");
      close(cfd);
      continue;
    }
    pthread_sigmask(SIG_BLOCK, &block, &old);
    start_conn(cfd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  close(ls);
  /* Tear down every connection; wait (bounded) for their threads. */
  pthread_mutex_lock(&g_mu);
  for (Conn *c = g_conns; c; c = c->next)
    conn_close(c);
  int64_t until = now_ns() + 5000000000LL;
  while (g_nconns > 0 && now_ns() < until) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&g_cv, &g_mu, &ts);
  }
  int left = g_nconns;
  pthread_mutex_unlock(&g_mu);
  if (left > 0)
    fprintf(stderr, "latency_proxy: %d connection(s) did not stop in time\n", left);
  return 0;
}
