# taskq: PGXS build.  Tests are run by test/run (all suites, as an
# unprivileged user); `make installcheck` runs the regression suite alone
# against a server that already has taskq preloaded.

EXTENSION = taskq
MODULE_big = taskq
OBJS = \
	src/taskq.o \
	src/common.o \
	src/shmem.o \
	src/outbox.o \
	src/cursors.o \
	src/limited.o \
	src/enqueue.o \
	src/handlers.o \
	src/tasks.o \
	src/deps.o \
	src/launcher.o \
	src/dispatcher.o \
	src/executors.o \
	src/logical.o \
	src/monitor.o \
	src/queues.o \
	src/explain.o \
	src/cron.o \
	src/schedules.o \
	src/external.o \
	src/pools.o

# Released install scripts are frozen; each release adds an update script.
# The newest version's install script is built: schema taskq, then the
# 0.1 script and every update after it, so a fresh install and an updated
# database run the same statements.
DATA = sql/taskq--0.1.sql sql/taskq--0.1.control sql/taskq--0.1--0.2.sql
DATA_built = sql/taskq--0.2.sql
PGFILEDESC = "taskq - transactional task outbox"

# Explicit list: sql/ also holds the install script.
REGRESS = setup handlers enqueue options policies api security version logical limits plans deps schedules external executors indexes
REGRESS_OPTS = --inputdir=. --outputdir=$(CURDIR)/results

PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
ifdef WERROR
PG_CFLAGS += -Werror
endif

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

EXTRA_CLEAN = sql/taskq--0.2.sql results regression.diffs regression.out tmp_check log

# Every source includes src/taskq.h, whose structs live in shared memory:
# rebuild them all when it changes (PGXS tracks headers only in servers
# configured with --enable-depend).
$(OBJS) $(OBJS:.o=.bc): src/taskq.h

# The 0.2 install script.  sed drops each piece's psql guard (the
# "\echo ... \quit" line), which must not stop a CREATE EXTENSION.
TASKQ_PIECES = sql/taskq--0.1.sql sql/taskq--0.1--0.2.sql
sql/taskq--0.2.sql: $(TASKQ_PIECES)
	{ echo '-- taskq 0.2, built by the Makefile from: $(TASKQ_PIECES)'; \
	  printf '%s\n' '\echo Use "CREATE EXTENSION taskq" to load this file. \quit'; \
	  echo 'CREATE SCHEMA taskq;'; \
	  for f in $(TASKQ_PIECES); do echo "-- ---- $$f"; sed '/^\\echo Use .* \\quit$$/d' $$f; done; \
	} > $@
