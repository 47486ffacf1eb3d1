/*
 * store.h — kilnd's files under the state directory:
 *   blobs/sha256/<hex>   content-addressed checkpoints and artifacts (immutable)
 *   datasets/<id>/       uploaded datasets (HR/, LR_bicubic/X<s>/)
 *   tmp/                 uploads and artifacts being written (emptied at start)
 * A blob is written to tmp/, fsynced, and renamed into blobs/ (then the
 * directory is fsynced) before any database row refers to it, so a row never
 * points at a missing or partial file; a crash leaves at most a stray file in
 * tmp/, removed at the next start.
 */
#ifndef KILN_STORE_H
#define KILN_STORE_H

#include <stddef.h>

#include "status.h"

typedef struct kiln_store kiln_store;

kiln_status kiln_store_open(const char *state_dir, kiln_store **out);
void kiln_store_close(kiln_store *s);

const char *kiln_store_root(const kiln_store *s);
const char *kiln_store_tmp_dir(const kiln_store *s);
const char *kiln_store_datasets_dir(const kiln_store *s);

/* Create a new empty file tmp/<prefix>-<random>; path gets its name (n >= 1024). */
kiln_status kiln_store_tmp_create(kiln_store *s, const char *prefix, char *path, size_t n, int *fd);
/* A fresh name tmp/<prefix>-<random> (nothing created). */
kiln_status kiln_store_tmp_name(kiln_store *s, const char *prefix, char *path, size_t n);
/* fsync the finished temporary file and rename it to blobs/sha256/<sha_hex>
 * (if that blob exists already, the temporary file is removed instead). */
kiln_status kiln_store_adopt(kiln_store *s, const char *tmp_path, const char *sha_hex);
/* Path of a blob (it may not exist). */
void kiln_store_blob_path(const kiln_store *s, const char *sha_hex, char *out, size_t n);
/* Number of files in tmp/ (tests: nothing half-written remains). */
int kiln_store_tmp_count(const kiln_store *s);

#endif
