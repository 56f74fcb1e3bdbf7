/* shim.h - libarchive, for importing tar, tar.gz and zip archives into shards. */
#ifndef VMEXEC_CARCHIVE_SHIM_H
#define VMEXEC_CARCHIVE_SHIM_H

#include <archive.h>
#include <archive_entry.h>

#endif
