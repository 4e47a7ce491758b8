/* watch.h - noticing changes made by other clients.
 *
 * Owns: one thread and one connection of its own (never SELECTing, so
 * STATUS answers are exact) that, every interval, asks LIST and STATUS of
 * each mailbox whose listing is cached, and refreshes the listings that
 * changed.  The refresh goes through dircache, whose observer makes the
 * kernel forget entries of messages that went away.
 */
#pragma once

#include <glib.h>

#include "imapfuse/conn.h"
#include "imapfuse/dircache.h"
#include "imapfuse/pool.h"

G_BEGIN_DECLS

typedef struct Watch Watch;

/* interval_s 0: no watching (returns NULL).  pool: whose fences (a
 * RENAME or DELETE under way) its STATUS commands respect.  Mailboxes
 * the user has not used for idle_s (0: never mind) are not polled. */
Watch *watch_new(const ImapEndpoint *ep, Dircache *dc, Pool *pool, guint interval_s,
                 guint idle_s);
/* Stops the watcher; returns its connection, still open (or NULL), for the
 * caller to close after the unmount: its LOGOUT to a server gone silent
 * held the unmount up 2 s. */
ImapConn *watch_free(Watch *w);
/* No round starts after this (one under way ends as it does); for a stop
 * that must not wait.  NULL is fine. */
void watch_stop(Watch *w);
/* Loads the lists the last mount saved and confirms, on connection c, with
 * pipelined STATUS (eight mailboxes a round trip, 64 mailboxes at most),
 * those that are still exact: opening their directories then costs no
 * round trip.  The others are checked at their first opendir. */
gboolean watch_confirm_saved(Dircache *dc, ImapConn *c, GError **error);

/* Number of completed rounds (tests, diagnostics). */
guint watch_rounds(Watch *w);

G_END_DECLS
