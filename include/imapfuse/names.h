/* names.h - names on the server <-> names in the filesystem.
 *
 * Owns: modified UTF-7 (RFC 3501 5.1.3) both ways; the reversible escaping
 * of one mailbox-name component into a directory name; message file names
 * "<UID>.eml".  Pure functions, no I/O, table-tested in
 * tests/unit/test_names.c.
 *
 * Directory-name escaping (documented in doc/imapfuse.1.scd):
 *   '%'  -> "%25"        (so every escape is unambiguous)
 *   '/'  -> "%2F"        (cannot appear in a file name)
 *   bytes 0x01-0x1F, 0x7F -> "%XX" (upper-case hex)
 *   a leading '.'  -> "%2E" (no directory name starts with a dot; tools skip
 *                     those, and "." / ".." are reserved)
 *   a name that looks like a message file (digits + ".eml") has its first
 *                     character escaped ("%31.eml" for "1.eml") so it never
 *                     collides with a message
 *   the empty component -> "%"
 * Decoding turns "%XX" (two hex digits, either case) back into that byte, a
 * lone "%" into the empty name, and keeps any other '%' literally (so names
 * typed by users for mkdir need no escaping unless they contain "%XX").
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define NAMES_ERROR (names_error_quark())
GQuark names_error_quark(void);
typedef enum {
  NAMES_ERROR_INVALID, /* malformed input */
} NamesError;

/* Modified UTF-7 -> UTF-8.  Rejects malformed input (bad base64, unpadded
 * bits, non-minimal encodings such as an encoded printable ASCII char, bad
 * UTF-16 surrogates, raw 8-bit bytes).  Returns newly allocated string. */
char *names_mutf7_to_utf8(const char *in, GError **error);
/* UTF-8 -> modified UTF-7.  Rejects invalid UTF-8. */
char *names_utf8_to_mutf7(const char *in, GError **error);

/* One UTF-8 component -> directory name (see escaping above). */
char *names_escape_component(const char *component);
/* Directory name -> UTF-8 component: the inverse of names_escape_component
 * for its outputs; any other '%' is kept as it is ("100%AB", "Q3%2024").
 * Returns NULL with error if the result is not valid UTF-8. */
char *names_unescape_component(const char *dirname, GError **error);

/* Split a server mailbox name by its hierarchy delimiter (delim 0 = flat)
 * into components, decoding modified UTF-7 unless utf8 is TRUE (UTF8=ACCEPT
 * enabled).  A NULL-terminated array, or NULL with error if a component does
 * not decode.  Returns components, not escaped directory names. */
char **names_split_mailbox(const char *imap_name, char delim, gboolean utf8,
                           GError **error);
/* Join UTF-8 components with delim and encode to modified UTF-7 unless
 * utf8.  Fails if a component contains delim, is empty, or is not UTF-8. */
char *names_join_mailbox(const char *const *components, char delim,
                         gboolean utf8, GError **error);

/* "<uid>.eml" */
char *names_message_filename(guint32 uid);
/* Strict inverse: decimal without leading zeros, 1..4294967295, ".eml". */
gboolean names_parse_message_filename(const char *name, guint32 *uid);

G_END_DECLS
