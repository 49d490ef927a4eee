# taskq: PGXS build.  Tests are run by test/run (all suites, as an
# unprivileged user); `make installcheck` runs the regression suite alone
# against a server that already has taskq preloaded.

EXTENSION = taskq
MODULE_big = taskq
OBJS = \
	src/taskq.o \
	src/shmem.o \
	src/enqueue.o \
	src/handlers.o \
	src/tasks.o \
	src/launcher.o \
	src/dispatcher.o \
	src/executors.o \
	src/monitor.o

DATA = sql/taskq--0.1.sql
PGFILEDESC = "taskq - transactional task outbox"

# Explicit list: sql/ also holds the install script.
REGRESS = setup handlers enqueue options policies api security
REGRESS_OPTS = --inputdir=. --outputdir=$(CURDIR)/results

PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
ifdef WERROR
PG_CFLAGS += -Werror
endif

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

EXTRA_CLEAN = results regression.diffs regression.out tmp_check log

# Every source includes src/taskq.h, whose structs live in shared memory:
# rebuild them all when it changes (PGXS tracks headers only in servers
# configured with --enable-depend).
$(OBJS) $(OBJS:.o=.bc): src/taskq.h
