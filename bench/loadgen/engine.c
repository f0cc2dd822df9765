/* The load generator's inner loops in C: the same open and closed loops as
 * loadgen/generator.py, for when Python's per-request work is the ceiling.
 *
 * Strategy. Python keeps everything but the loop: it opens the device sockets, encodes
 * each device's request template once, allocates the result arrays (latency and lag
 * histograms, codes, the answers-per-100-ms timeline) and turns the result back into
 * the same raw dict the Python loops return, so merging and the report do not know
 * which engine ran. Here, per request: one template copy and the patches of MID,
 * token and per-event unique field into a send slot; one sendmmsg per device burst;
 * one recvmmsg per readable socket; a header read, a state byte and a histogram
 * increment per answer. The rules are the Python loops' (see that module's docstring):
 * latency from the scheduled time in the open loop, RFC 7252 §4.2 retransmission with
 * a randomised, doubling timer, a byte of state per request, timeouts from the
 * schedule; in the closed loop a window per device, refilled per answer.
 *
 * Linux only (recvmmsg, sendmmsg, epoll); nothing but libc. Built on demand by
 * loadgen/native.py and called through ctypes by loadgen/cengine.py, whose structures
 * mirror lg_params and lg_result below.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 64
#define RECV_SLOT 512
#define TOKEN_LEN 4
#define SWEEP_S 0.002    /* open loop: retransmission and timeout sweeps */
#define WATCH_S 0.0005   /* open loop: shorter waits are slept, not watched */
#define PROGRESS_S 0.05
#define T_BASE 1700000000LL /* wire.py's SenML time base */

enum { UNSENT, PENDING, EMPTY_ACKED, ANSWERED, GIVEN_UP };
enum { KIND_ID, KIND_TJSON, KIND_TCBOR };
/* progress fields (generator.py: _SENT, _ANSWERED, _OK, _TIMEOUTS, _RETRANS, _LAG) */
enum { P_SENT, P_ANSWERED, P_OK, P_TIMEOUTS, P_RETRANS, P_LAG };

struct lg_params {
  int ndev;
  const int *fds;                   /* connected, non-blocking UDP sockets */
  const unsigned char *templates;   /* ndev * size bytes, device prefixes written */
  int size;
  int kind;                         /* KIND_* of the per-event unique field */
  int events;
  const int *offsets;               /* events offsets of the unique field */
  const unsigned short *mid_base;   /* per device */
  double start;                     /* CLOCK_MONOTONIC seconds */
  double rate;                      /* open loop: requests/s of the whole run */
  int64_t count;                    /* open loop: this process's requests */
  int index, procs, burst;
  int64_t k_warm;                   /* open loop: first measured request */
  double timeout, ack_timeout, spread;
  int max_retransmit, con;
  double tick, hard_end;
  int window;                       /* closed loop: in flight per device */
  double measure_from, end_at;      /* closed loop */
  int max_seq;                      /* closed loop: sequence numbers per device */
  uint64_t seed;
  int sub_bits;
  int64_t max_value;
  int n_buckets;
  int timeline_hz, tl_len;
  double *progress;                 /* this process's progress doubles, or NULL */
};

struct lg_result {
  int64_t sent_measured, sent_total, answered, ok, timeouts, retrans, send_errors;
  int64_t icmp_errors, late, separate, rsts, stale, exhausted;
  int64_t lat_min, lat_max, lag_max;
  double first_send, last_send, last_answer, wall_s;
};

struct out {
  int64_t *lat, *lag, *codes, *timeline;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s) {
  if (s <= 0) return;
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

static int bit_length(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

/* histogram.py's bucket_of */
static int bucket(const struct lg_params *p, int64_t v) {
  int64_t exact = 1LL << p->sub_bits, half = 1LL << (p->sub_bits - 1);
  if (v < exact) return v > 0 ? (int)v : 0;
  if (v > p->max_value) v = p->max_value;
  int e = bit_length((uint64_t)v) - p->sub_bits;
  int64_t b = exact + ((int64_t)(e - 1) << (p->sub_bits - 1)) + (v >> e) - half;
  return b < p->n_buckets ? (int)b : p->n_buckets - 1;
}

static uint64_t rng_state;
static double rnd(void) { /* xorshift64*: uniform in [0, 1) */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

/* -- sending -------------------------------------------------------------------------- */

struct sender {
  unsigned char *buf;
  struct mmsghdr hdr[SLOTS];
  struct iovec iov[SLOTS];
};

static void sender_init(struct sender *s, unsigned char *buf, int size) {
  s->buf = buf;
  memset(s->hdr, 0, sizeof s->hdr);
  for (int i = 0; i < SLOTS; i++) {
    s->iov[i].iov_base = buf + (size_t)i * size;
    s->iov[i].iov_len = (size_t)size;
    s->hdr[i].msg_hdr.msg_iov = &s->iov[i];
    s->hdr[i].msg_hdr.msg_iovlen = 1;
  }
}

static void put_hex8(unsigned char *o, uint32_t v) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 7; i >= 0; i--) {
    o[i] = (unsigned char)digits[v & 15];
    v >>= 4;
  }
}

static void put_dec10(unsigned char *o, int64_t v) {
  for (int i = 9; i >= 0; i--) {
    o[i] = (unsigned char)('0' + v % 10);
    v /= 10;
  }
}

/* wire.py's Template.stager: the template, then MID, token and unique fields */
static void stage(const struct lg_params *p, unsigned char *at, int dev, unsigned mid,
                  uint32_t token, int64_t uniq) {
  memcpy(at, p->templates + (size_t)dev * p->size, (size_t)p->size);
  at[2] = (unsigned char)(mid >> 8);
  at[3] = (unsigned char)mid;
  at[4] = (unsigned char)(token >> 24);
  at[5] = (unsigned char)(token >> 16);
  at[6] = (unsigned char)(token >> 8);
  at[7] = (unsigned char)token;
  for (int j = 0; j < p->events; j++) {
    unsigned char *o = at + p->offsets[j];
    int64_t v = uniq * p->events + j;
    if (p->kind == KIND_ID) {
      put_hex8(o + 8, (uint32_t)v); /* the first 8 digits are the device prefix */
    } else if (p->kind == KIND_TJSON) {
      put_dec10(o, T_BASE + v);
    } else {
      uint32_t t = (uint32_t)(T_BASE + v);
      o[0] = (unsigned char)(t >> 24);
      o[1] = (unsigned char)(t >> 16);
      o[2] = (unsigned char)(t >> 8);
      o[3] = (unsigned char)t;
    }
  }
}

/* batch.py's Arena.flush: a full send buffer drops the rest, a refused one is skipped */
static int flush(struct sender *s, int fd, int count) {
  int at = 0, sent = 0;
  while (at < count) {
    int done = sendmmsg(fd, s->hdr + at, (unsigned)(count - at), MSG_DONTWAIT);
    if (done > 0) {
      at += done;
      sent += done;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) break;
    at++;
  }
  return sent;
}

static void send_empty_ack(int fd, const unsigned char *d) {
  unsigned char ack[4] = {0x60, 0x00, d[2], d[3]};
  (void)send(fd, ack, 4, MSG_DONTWAIT);
}

/* -- receiving ------------------------------------------------------------------------ */

struct receiver {
  unsigned char buf[SLOTS][RECV_SLOT];
  struct mmsghdr hdr[SLOTS];
  struct iovec iov[SLOTS];
};

static void receiver_init(struct receiver *r) {
  memset(r->hdr, 0, sizeof r->hdr);
  for (int i = 0; i < SLOTS; i++) {
    r->iov[i].iov_base = r->buf[i];
    r->iov[i].iov_len = RECV_SLOT;
    r->hdr[i].msg_hdr.msg_iov = &r->iov[i];
    r->hdr[i].msg_hdr.msg_iovlen = 1;
  }
}

/* up to SLOTS datagrams; -1 for an ICMP error (nobody listens), 0 for none */
static int receive(struct receiver *r, int fd) {
  int n = recvmmsg(fd, r->hdr, SLOTS, MSG_DONTWAIT, NULL);
  if (n >= 0) return n;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
  return -1;
}

/* the fd -> device map: fds are small integers */
static int *fd_map(const struct lg_params *p, int *len) {
  int top = 0;
  for (int i = 0; i < p->ndev; i++)
    if (p->fds[i] > top) top = p->fds[i];
  int *map = malloc(sizeof(int) * (size_t)(top + 1));
  if (!map) return NULL;
  for (int i = 0; i <= top; i++) map[i] = -1;
  for (int i = 0; i < p->ndev; i++) map[p->fds[i]] = i;
  *len = top + 1;
  return map;
}

static void record_latency(const struct lg_params *p, struct out *o, struct lg_result *r,
                           int64_t lat) {
  o->lat[bucket(p, lat)]++;
  if (lat > r->lat_max) r->lat_max = lat;
  if (lat < r->lat_min) r->lat_min = lat;
}

static void count_timeline(const struct lg_params *p, struct out *o, double now, int n) {
  int64_t slot = (int64_t)((now - p->start) * p->timeline_hz);
  int last = p->tl_len - 1;
  o->timeline[(slot >= 0 && slot < last) ? slot : last] += n;
}

/* a loop's sockets: its send slots, receive slots, fd -> device map and epoll set */
struct io {
  struct sender snd;
  struct receiver rcv;
  unsigned char *sendbuf;
  int *map;
  int fdlen, ep;
};

static void io_close(struct io *io) {
  if (!io) return;
  free(io->sendbuf);
  free(io->map);
  if (io->ep >= 0) close(io->ep);
  free(io);
}

static struct io *io_open(const struct lg_params *p) {
  struct io *io = calloc(1, sizeof *io);
  if (!io) return NULL;
  io->ep = epoll_create1(0);
  io->sendbuf = malloc((size_t)p->size * SLOTS);
  io->map = fd_map(p, &io->fdlen);
  if (io->ep < 0 || !io->sendbuf || !io->map) {
    io_close(io);
    return NULL;
  }
  sender_init(&io->snd, io->sendbuf, p->size);
  receiver_init(&io->rcv);
  for (int i = 0; i < p->ndev; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p->fds[i]};
    if (epoll_ctl(io->ep, EPOLL_CTL_ADD, p->fds[i], &ev) < 0) {
      io_close(io);
      return NULL;
    }
  }
  return io;
}

/* the answers waiting on ready socket `fd`: how many (0: none, an ICMP error, or not
 * a device's), read into io->rcv with their device and the time, and in the timeline */
static int take(const struct lg_params *p, struct out *o, struct lg_result *r, struct io *io,
                int fd, int *dev, double *now) {
  *dev = fd < io->fdlen ? io->map[fd] : -1;
  if (*dev < 0) return 0;
  int n = receive(&io->rcv, fd);
  if (n < 0) r->icmp_errors++;
  if (n <= 0) return 0;
  *now = now_s();
  count_timeline(p, o, *now, n);
  return n;
}

static void publish(const struct lg_params *p, const struct lg_result *r, int64_t ok) {
  if (!p->progress) return;
  p->progress[P_SENT] = (double)r->sent_measured;
  p->progress[P_ANSWERED] = (double)r->answered;
  p->progress[P_OK] = (double)ok;
  p->progress[P_TIMEOUTS] = (double)r->timeouts;
  p->progress[P_RETRANS] = (double)r->retrans;
  p->progress[P_LAG] = (double)r->lag_max / 1e3;
}

/* the end of a run: the totals, the wall time and a last progress line; 0 (success) */
static int finish(const struct lg_params *p, struct lg_result *r, int64_t ok, double wall0) {
  r->ok = ok;
  r->wall_s = now_s() - wall0;
  publish(p, r, ok);
  return 0;
}

/* -- the open loop -------------------------------------------------------------------- */

struct rtx {
  double deadline;
  int64_t j;
  int tx;
  double rto;
};

struct heap {
  struct rtx *a;
  size_t n, cap;
};

static int heap_push(struct heap *h, struct rtx v) {
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 1024;
    struct rtx *a = realloc(h->a, cap * sizeof *a);
    if (!a) return -1;
    h->a = a;
    h->cap = cap;
  }
  size_t i = h->n++;
  while (i > 0) {
    size_t up = (i - 1) / 2;
    if (h->a[up].deadline <= v.deadline) break;
    h->a[i] = h->a[up];
    i = up;
  }
  h->a[i] = v;
  return 0;
}

static struct rtx heap_pop(struct heap *h) {
  struct rtx top = h->a[0], last = h->a[--h->n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= h->n) break;
    if (c + 1 < h->n && h->a[c + 1].deadline < h->a[c].deadline) c++;
    if (last.deadline <= h->a[c].deadline) break;
    h->a[i] = h->a[c];
    i = c;
  }
  if (h->n) h->a[i] = last;
  return top;
}

/* the device's most recent request whose MID matches (empty ACK, RST); -1 if none */
static int64_t k_of_mid(const struct lg_params *p, const int64_t *sent_by_dev, int dev,
                        unsigned mid) {
  int64_t n = sent_by_dev[dev];
  if (n == 0) return -1;
  int64_t seq = n - 1 - ((p->mid_base[dev] + n - 1 - mid) & 0xFFFF);
  if (seq < 0) return -1;
  int burst = p->burst;
  return ((seq / burst) * p->ndev + dev) * burst + seq % burst;
}

int lg_open_loop(const struct lg_params *p, struct lg_result *r, int64_t *lat,
                 int64_t *lag, int64_t *codes, int64_t *timeline) {
  struct out o = {lat, lag, codes, timeline};
  const int ndev = p->ndev, procs = p->procs, burst = p->burst > 0 ? p->burst : 1;
  const int64_t count = p->count;
  const double rate = p->rate, t0 = p->start + p->index / rate, per = procs / rate;
  int rc = -1;
  unsigned char *state = calloc((size_t)(count > 0 ? count : 1), 1);
  int64_t *sent_by_dev = calloc((size_t)ndev, sizeof(int64_t));
  unsigned char *one = malloc((size_t)p->size);
  struct io *io = io_open(p);
  struct heap rtx = {0};
  struct epoll_event evs[SLOTS];
  if (!state || !sent_by_dev || !one || !io) goto done;
  rng_state = p->seed | 1;
  memset(r, 0, sizeof *r);
  r->lat_min = INT64_MAX;
  int64_t k = 0, kr = 0, kt = 0, ok = 0;
  double next_sweep = 0, next_progress = 0;
  double wall0 = now_s();
  for (;;) {
    double now = now_s();
    /* 1. everything due, a device burst per sendmmsg */
    int64_t i_due = (int64_t)floor((now - p->start) * rate + 1e-6);
    int64_t due = i_due < p->index ? 0 : (i_due - p->index) / procs + 1;
    if (due > count) due = count;
    if (k < due) {
      int64_t lagv = (int64_t)((now - (t0 + k * per)) * 1e6);
      if (lagv < 0) lagv = 0;
      int64_t k_first = k;
      while (k < due) {
        int64_t block = k / burst;
        int dev = (int)(block % ndev);
        int64_t end = (block + 1) * burst;
        if (end > due) end = due;
        if (end - k > SLOTS) end = k + SLOTS;
        int64_t seq = (block / ndev) * burst + k % burst;
        int64_t base = p->mid_base[dev] + seq;
        for (int64_t kk = k; kk < end; kk++)
          stage(p, io->sendbuf + (size_t)(kk - k) * p->size, dev, (unsigned)((base + kk - k) & 0xFFFF),
                (uint32_t)kk, kk);
        int n = (int)(end - k);
        r->send_errors += n - flush(&io->snd, p->fds[dev], n);
        sent_by_dev[dev] += n;
        k = end;
      }
      memset(state + k_first, PENDING, (size_t)(k - k_first));
      int64_t measured = k - (k_first < p->k_warm ? p->k_warm : k_first);
      if (measured > 0) {
        lag[bucket(p, lagv)] += measured;
        if (lagv > r->lag_max) r->lag_max = lagv;
        if (r->sent_measured == 0) r->first_send = now;
        r->sent_measured += measured;
        r->last_send = now;
      }
    }
    if (now >= next_sweep) {
      next_sweep = now + SWEEP_S;
      /* 2. first retransmission timers of requests still pending ACK_TIMEOUT after
       * their schedule (RFC 7252 §4.2: ACK_TIMEOUT x [1, ACK_RANDOM_FACTOR]) */
      if (p->con) {
        int64_t lim = (int64_t)floor((now - p->ack_timeout - t0) / per) + 1;
        if (lim > k) lim = k;
        for (; kr < lim; kr++) {
          if (state[kr] != PENDING) continue;
          double rto = p->ack_timeout * (1.0 + p->spread * rnd());
          struct rtx e = {t0 + kr * per + rto, kr, 1, rto};
          if (heap_push(&rtx, e) < 0) goto done;
        }
      }
      /* 3. give up on requests older than the timeout (from their schedule) */
      int64_t lim = (int64_t)floor((now - p->timeout - t0) / per) + 1;
      if (lim > k) lim = k;
      for (; kt < lim; kt++) {
        if (state[kt] == PENDING || state[kt] == EMPTY_ACKED) {
          if (kt >= p->k_warm) r->timeouts++;
          state[kt] = GIVEN_UP;
        }
      }
      if (now >= next_progress) {
        publish(p, r, ok);
        next_progress = now + PROGRESS_S;
      }
      if (kt >= count || now > p->hard_end) break;
      if (k >= count) {
        int64_t j = kt;
        while (j < count && state[j] != PENDING && state[j] != EMPTY_ACKED) j++;
        if (j >= count) break;
      }
    }
    /* 4. retransmit expired CONs (same MID and token: the server dedups them) */
    while (rtx.n && rtx.a[0].deadline <= now) {
      struct rtx e = heap_pop(&rtx);
      if (state[e.j] != PENDING || e.tx > p->max_retransmit) continue;
      int64_t block = e.j / burst;
      int dev = (int)(block % ndev);
      int64_t seq = (block / ndev) * burst + e.j % burst;
      stage(p, one, dev, (unsigned)((p->mid_base[dev] + seq) & 0xFFFF), (uint32_t)e.j, e.j);
      if (send(p->fds[dev], one, (size_t)p->size, MSG_DONTWAIT) < 0) r->send_errors++;
      r->retrans++;
      struct rtx again = {now + e.rto * (double)(1LL << e.tx), e.j, e.tx + 1, e.rto};
      if (heap_push(&rtx, again) < 0) goto done;
    }
    /* 5. wait for answers or the next due time */
    double wait = k < count ? t0 + k * per - now : 0.01;
    if (rtx.n && rtx.a[0].deadline - now < wait) wait = rtx.a[0].deadline - now;
    if (wait > 0.01)
      wait = 0.01;
    else if (wait > 0 && wait < p->tick)
      wait = p->tick;
    int nev;
    if (wait >= 0.002) {
      nev = epoll_wait(io->ep, evs, SLOTS, (int)floor(wait * 1000.0));
    } else if (wait >= WATCH_S) {
      struct pollfd pfd = {.fd = io->ep, .events = POLLIN};
      struct timespec ts = {0, (long)(wait * 1e9)};
      if (ppoll(&pfd, 1, &ts, NULL) <= 0) continue;
      nev = epoll_wait(io->ep, evs, SLOTS, 0);
    } else {
      /* a short wait (a high rate): slept out, then everything that came is read */
      sleep_s(wait);
      nev = epoll_wait(io->ep, evs, SLOTS, 0);
    }
    for (int e = 0; e < nev; e++) {
      int fd = evs[e].data.fd, dev;
      int n = take(p, &o, r, io, fd, &dev, &now);
      if (!n) continue;
      double lat_base = now - t0;
      for (int i = 0; i < n; i++) {
        const unsigned char *d = io->rcv.buf[i];
        unsigned len = io->rcv.hdr[i].msg_len;
        if (len < 4) {
          r->stale++;
          continue;
        }
        int code = d[1];
        int64_t j;
        if (code == 0) {
          j = k_of_mid(p, sent_by_dev, dev, ((unsigned)d[2] << 8) | d[3]);
          if ((d[0] & 0x30) == 0x20) { /* empty ACK: a separate response follows */
            if (j >= 0 && j < count && state[j] == PENDING) state[j] = EMPTY_ACKED;
            continue;
          }
          if ((d[0] & 0x30) != 0x30) {
            r->stale++;
            continue;
          }
          r->rsts++;
          code = 256;
        } else {
          if ((d[0] & 0x30) == 0) { /* a separate CON response: ACK it */
            r->separate++;
            send_empty_ack(fd, d);
          }
          if ((d[0] & 0x0F) != TOKEN_LEN || len < 8) {
            r->stale++;
            continue;
          }
          j = ((int64_t)d[4] << 24) | ((int64_t)d[5] << 16) | ((int64_t)d[6] << 8) | d[7];
        }
        if (j < 0 || j >= count) {
          r->stale++;
          continue;
        }
        if (state[j] != PENDING && state[j] != EMPTY_ACKED) {
          r->late++; /* an answer to a retransmission, or after the timeout */
          continue;
        }
        state[j] = ANSWERED;
        if (j < p->k_warm) continue;
        r->answered++;
        codes[code]++;
        if (code >= 64 && code < 96) ok++;
        record_latency(p, &o, r, (int64_t)((lat_base - j * per) * 1e6));
      }
      r->last_answer = now;
    }
  }
  for (int64_t j = p->k_warm; j < count; j++)
    if (state[j] == PENDING || state[j] == EMPTY_ACKED) r->timeouts++;
  r->sent_total = k;
  rc = finish(p, r, ok, wall0);
done:
  free(state);
  free(sent_by_dev);
  free(one);
  free(rtx.a);
  io_close(io);
  return rc;
}

/* -- the closed loop ------------------------------------------------------------------ */

struct flight {
  int32_t seq; /* -1: free */
  double sent_at;
};

struct cdev {
  int32_t next_seq; /* the device's next sequence number (token and MID offset) */
  int inflight;
};

/* up to `n` new requests on `dev` (into free window slots), each with its next
 * sequence number: the token is dev << 16 | seq, the MID the device's base + seq */
static void refill(const struct lg_params *p, struct io *io, struct flight *fl,
                   struct cdev *cd, struct lg_result *r, int dev, int n, double now) {
  struct flight *w = fl + (size_t)dev * p->window;
  int staged = 0;
  for (int s = 0; s < p->window && staged < n && staged < SLOTS; s++) {
    if (w[s].seq >= 0 || cd[dev].next_seq >= p->max_seq) continue;
    int32_t q = cd[dev].next_seq++;
    stage(p, io->sendbuf + (size_t)staged * p->size, dev,
          (unsigned)((p->mid_base[dev] + q) & 0xFFFF), ((uint32_t)dev << 16) | (uint32_t)q, q);
    w[s].seq = q;
    w[s].sent_at = now;
    staged++;
  }
  if (!staged) return;
  int went = flush(&io->snd, p->fds[dev], staged);
  r->send_errors += staged - went;
  r->sent_total += went;
  if (now >= p->measure_from) r->sent_measured += went;
  cd[dev].inflight += staged;
}

int lg_closed_loop(const struct lg_params *p, struct lg_result *r, int64_t *lat,
                   int64_t *lag, int64_t *codes, int64_t *timeline) {
  struct out o = {lat, lag, codes, timeline};
  (void)lag;
  const int ndev = p->ndev, window = p->window;
  int rc = -1;
  struct cdev *cd = calloc((size_t)ndev, sizeof *cd);
  struct flight *fl = malloc(sizeof *fl * (size_t)ndev * (size_t)window);
  struct io *io = io_open(p);
  struct epoll_event evs[SLOTS];
  if (!cd || !fl || !io) goto done;
  for (int64_t i = 0; i < (int64_t)ndev * window; i++) fl[i].seq = -1;
  memset(r, 0, sizeof *r);
  r->lat_min = INT64_MAX;
  while (now_s() < p->start) sleep_s(fmin(0.01, p->start - now_s()));
  double now = now_s(), wall0 = now;
  int64_t ok = 0;

  for (int dev = 0; dev < ndev; dev++) refill(p, io, fl, cd, r, dev, window, now);
  double next_sweep = now + 0.05, next_progress = now;
  while ((now = now_s()) < p->end_at) {
    if (now >= next_sweep) {
      next_sweep = now + 0.05;
      int busy = 0;
      for (int dev = 0; dev < ndev; dev++) {
        struct flight *w = fl + (size_t)dev * window;
        int freed = 0;
        for (int s = 0; s < window; s++) {
          if (w[s].seq >= 0 && now - w[s].sent_at > p->timeout) {
            w[s].seq = -1;
            cd[dev].inflight--;
            if (now >= p->measure_from) r->timeouts++;
            freed++;
          }
        }
        if (freed) refill(p, io, fl, cd, r, dev, freed, now);
        busy |= cd[dev].inflight > 0 || cd[dev].next_seq < p->max_seq;
      }
      if (!busy) {
        r->exhausted = 1;
        break;
      }
      if (now >= next_progress) {
        publish(p, r, r->answered);
        next_progress = now + PROGRESS_S;
      }
    }
    double left = p->end_at - now;
    int ms = (int)(fmin(0.01, left) * 1000.0);
    int nev = epoll_wait(io->ep, evs, SLOTS, ms > 0 ? ms : 0);
    for (int e = 0; e < nev; e++) {
      int fd = evs[e].data.fd, dev;
      int n = take(p, &o, r, io, fd, &dev, &now);
      if (!n) continue;
      int measuring = now >= p->measure_from, freed = 0;
      struct flight *w = fl + (size_t)dev * window;
      for (int i = 0; i < n; i++) {
        const unsigned char *d = io->rcv.buf[i];
        unsigned len = io->rcv.hdr[i].msg_len;
        if (len < 8 || (d[0] & 0x0F) != TOKEN_LEN) {
          if (len >= 4 && d[1] == 0 && (d[0] & 0x30) == 0x30)
            r->rsts++; /* a RST names no token: its slot frees at the timeout */
          else if (len < 4 || d[1] != 0)
            r->stale++;
          continue;
        }
        if ((d[0] & 0x30) == 0) {
          r->separate++;
          send_empty_ack(fd, d);
        }
        uint32_t tok = ((uint32_t)d[4] << 24) | ((uint32_t)d[5] << 16) |
                       ((uint32_t)d[6] << 8) | d[7];
        int s = 0;
        if ((int)(tok >> 16) == dev)
          for (; s < window; s++)
            if (w[s].seq == (int32_t)(tok & 0xFFFF)) break;
        if ((int)(tok >> 16) != dev || s == window) {
          r->late++;
          continue;
        }
        double sent_at = w[s].sent_at;
        w[s].seq = -1;
        cd[dev].inflight--;
        freed++;
        if (!measuring) continue;
        r->answered++;
        codes[d[1]]++;
        if (d[1] >= 64 && d[1] < 96) ok++;
        record_latency(p, &o, r, (int64_t)((now - sent_at) * 1e6));
      }
      if (freed) refill(p, io, fl, cd, r, dev, freed, now);
    }
  }
  r->first_send = p->measure_from;
  r->last_send = fmin(p->end_at, now_s());
  r->last_answer = p->end_at;
  rc = finish(p, r, ok, wall0);
done:
  io_close(io);
  free(fl);
  free(cd);
  return rc;
}
