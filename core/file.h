/*
 * file.h — reading a whole file into memory with a size limit: the one way
 * the readers that need their input in one buffer (.kiln artifacts, ONNX
 * models) get it.
 */
#ifndef KILN_FILE_H
#define KILN_FILE_H

#include <stddef.h>

#include "status.h"

/* *buf (malloc'ed, at least 1 byte) gets the content of the regular file at
 * path and *len its size. A file over max bytes is KILN_ERR_LIMIT, a missing
 * one KILN_ERR_NOT_FOUND, anything else that fails KILN_ERR_IO; messages
 * start with the path. */
kiln_status kiln_file_read(const char *path, size_t max, void **buf, size_t *len);

/* Write buf to path atomically: a temporary file in the same folder,
 * fsync, rename, fsync of the folder (a reader sees the old file or the
 * whole new one). Messages start with the path. */
kiln_status kiln_file_write_atomic(const char *path, const void *buf, size_t len);

#endif
