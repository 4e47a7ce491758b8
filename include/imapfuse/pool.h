/* pool.h - a bounded pool of logged-in IMAP connections.
 *
 * Owns: opening connections lazily up to a ceiling, handing each to one
 * thread at a time, preferring a connection that already has the wanted
 * mailbox selected (mailbox affinity saves a SELECT per request), and
 * replacing connections that died.  Design note in pool.c.
 */
#pragma once

#include <glib.h>

#include "imapfuse/conn.h"

G_BEGIN_DECLS

typedef struct Pool Pool;

/* first: an already open connection to start with (taken over), or NULL. */
Pool *pool_new(const ImapEndpoint *ep, guint max_conns, ImapConn *first);
/* Its connections' LOGOUTs answered by deadline_us (monotonic) or left
 * unanswered (imap_conn_close_by). */
void pool_free(Pool *p, gint64 deadline_us);
/* Every connection that has waited waited_us or more for the server's
 * answer to a command that changes nothing (a read, a listing, a search)
 * has its socket shut down, so that the work fails now instead of after
 * its timeout: at unmount, a server that does not answer held the exit
 * for several timeouts.  Changes (APPEND, STORE, EXPUNGE, ...) are never
 * cut: their outcome would be unknown.  Returns how many were cut.  Any
 * thread, any time before pool_free. */
guint pool_cut_waiting(Pool *p, gint64 waited_us);
/* pool_cut_waiting was called: the mount is stopping. */
gboolean pool_stopping(Pool *p);

/* Applied to every connection the pool opens (and to existing ones). */
void pool_set_unsolicited(Pool *p, ImapHandler fn, gpointer user);

/* A connection for work on mailbox (may be NULL for no preference); waits
 * while all are busy.  Release it with pool_release(). */
ImapConn *pool_acquire(Pool *p, const char *mailbox, GError **error);
void pool_release(Pool *p, ImapConn *c);

typedef gboolean (*PoolOp)(ImapConn *c, gpointer user, GError **error);
/* Run op on a connection.  When idempotent and the connection failed (lost,
 * timed out, garbage), the op is retried once on a fresh connection. */
gboolean pool_run(Pool *p, const char *mailbox, gboolean idempotent, PoolOp op,
                  gpointer user, GError **error);

/* Opens the connections not yet open, now and in parallel (each on a
 * thread of its own, selecting mailbox if not NULL), and returns at once:
 * for a scan about to need them all.  Call it only before pool_free. */
void pool_warm(Pool *p, const char *mailbox);

/* Every connection idle now is checked with NOOP before its next use:
 * after a DELETE or RENAME of a mailbox, for which the server drops the
 * connections that have it selected (at their next command, which a
 * NOOP then is, not an unlink or an append). */
void pool_check_before_use(Pool *p);

/* Work in mailbox outside pool_run (which does this itself): counted
 * while under way, so that pool_fence waits for it.  pool_enter waits
 * while the mailbox is fenced; pool_try_enter then returns FALSE. */
void pool_enter(Pool *p, const char *mailbox);
gboolean pool_try_enter(Pool *p, const char *mailbox);
void pool_leave(Pool *p, const char *mailbox);

/* Before a RENAME or DELETE of mailbox (and what is below it: names
 * continuing with delim; 0: none): waits, at most max_us, for our work in
 * it to end, LOGs OUT the idle connections that have it selected, and
 * holds new work in it back until pool_unfence(mailbox).  Dovecot leaves
 * a mailbox's dovecot-uidlist.lock behind when another session syncs the
 * mailbox while it is renamed, and SELECTs of it then wait for minutes.
 * The caller's RENAME must not name the mailbox in pool_run. */
void pool_fence(Pool *p, const char *mailbox, char delim, gint64 max_us);
void pool_unfence(Pool *p, const char *mailbox);

/* The server's round trip in microseconds: the shortest command round
 * trip (imap_conn_rtt_us) of any connection since one was found dead;
 * 0: none yet.  Lock-free. */
gint64 pool_rtt_us(Pool *p);

/* Counters for diagnostics and tests. */
guint pool_opened_total(Pool *p);

G_END_DECLS
