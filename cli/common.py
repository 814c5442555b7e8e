"""What every command module shares: the output consoles, the error and torchrun wrappers, and the config
resolution of the training commands. Command modules import this; cli/app.py imports the command modules."""
from __future__ import annotations

import contextvars
import errno
import functools
import inspect
import re
import signal
import sys
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from lightfmp import checkpoint, distributed
from lightfmp.config import RunConfig, config_keys, flag, load_yaml, resolve
from lightfmp.errors import LightFMPError

from .options import LIST_KEYS, config_flags

out = Console(soft_wrap=True)  # a line that names a path stays one line (piped output is 80 columns wide)
err = Console(stderr=True)


def _untyped_flags(params: list) -> list:
    """On/off flags (--quiet, --force, --help) take no value: show no type after them in --help."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


EXPECTED = {int: "expected an integer", float: "expected a number"}


def fail(message: str, code: int = 2):
    """The one-line error every command ends with on bad input: `error: MESSAGE` on stderr, then exit `code`."""
    # the message may quote a file's content or a column name: never read it as markup, and a line break in a value
    # the user gave (--label $'a\nb', a path) is shown escaped, so the error stays one line
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# click's errors, from wherever this typer takes click (its own copy or the click package)
_CLICK_ERRORS = sys.modules[typer.BadParameter.__module__]


def _name(param) -> str:
    """How a message names an option (its long flag) or an argument (RUN)."""
    return max((o for o in param.opts if o.startswith("--")), key=len, default=None) or \
        (param.metavar or param.name or "").upper()


def _bad_value(command, ctx, args: list[str], e: typer.BadParameter):
    """A value the option's type refuses (`--epochs abc`), as one line naming the flag and the value."""
    param = e.param
    if param is None:
        fail(e.format_message())
    name = _name(param)
    if isinstance(e, _CLICK_ERRORS.MissingParameter):  # no value to quote
        fail(f"Missing {'argument' if isinstance(param, TyperArgument) else 'option'} {name}")
    # the text as given: the arguments parsed again (they parsed once already), without converting them
    value = command.make_parser(ctx).parse_args(args=list(args))[0].get(param.name)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    fail(f"{name} {value!r}: {EXPECTED.get(annotation) or e.message}" if isinstance(value, str)
         else f"{name}: {EXPECTED.get(annotation) or e.message}")


def _no_empty_paths(command, ctx, args: list[str]) -> None:
    """A path given as '' (`--out "$UNSET"`) would be read as the current directory: refuse it in one line."""
    raw = command.make_parser(ctx).parse_args(args=list(args))[0]
    for param in command.params:
        if getattr(getattr(param, "type_descriptor", None), "annotation", None) is not Path:
            continue
        value = raw.get(param.name)
        if value == "" or (isinstance(value, (list, tuple)) and "" in value):
            fail(f"{_name(param)} '': is empty; give a path")


# options whose value is comma-separated: the config's lists, and bench's and profile's own
COMMA_LISTS = LIST_KEYS | {"seeds", "methods", "ablate_subset", "batch_sizes", "clients"}


def _given_once(command, ctx, args: list[str]) -> None:
    """A list flag given twice kept only its last list, quietly (`--ignore a --ignore b` ignored b alone, where
    lists that add up were meant): refused in one line. A scalar flag given again takes the later value, as in
    most command lines (`... --epochs 1 --epochs 3` is 3)."""
    order = command.make_parser(ctx).parse_args(args=list(args))[2]
    for param in dict.fromkeys(order):
        n = order.count(param)
        if n > 1 and isinstance(param, TyperOption) and param.name in COMMA_LISTS:
            fail(f"{_name(param)} is given {n} times; give it once (a list is one flag: comma-separated values)")


class Command(TyperCommand):
    """A command whose help shows no value type after on/off flags and writes its arguments in the usage line as
    `RUN` (`[RUN]` when optional) rather than `{run}`, and whose options end a value of the wrong type
    (`--epochs abc`), a missing argument, a value given to an on/off flag (`--force=1`) or an unknown option in one
    line, like any other bad input. Every command is registered with `cls=Command`."""

    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))

    def parse_args(self, ctx, args):
        given = list(args)
        try:
            rest = super().parse_args(ctx, args)
        except typer.BadParameter as e:
            _bad_value(self, ctx, given, e)
        except _CLICK_ERRORS.UsageError as e:  # --force=1, --epochs without its value, an unknown option
            fail(e.format_message())
        _no_empty_paths(self, ctx, given)
        _given_once(self, ctx, given)
        return rest

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = (p.metavar or p.name or "").upper() + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
            else:
                pieces.extend(p.get_usage_pieces(ctx))
        return pieces


class Group(TyperGroup):
    """A command group whose help shows no value type after --help, and which ends a mistyped command
    (`lightfmp trian`) or an unknown option in one line, like any other bad input (with no arguments it still shows
    its help)."""

    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except _CLICK_ERRORS.NoArgsIsHelpError:
            raise
        except _CLICK_ERRORS.UsageError as e:
            fail(e.format_message())

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except _CLICK_ERRORS.UsageError as e:
            fail(e.format_message())


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)
TERMINATED = 143   # ... and by SIGTERM (128 + SIGTERM: kill, timeout, a stopped container)


class Terminated(BaseException):
    """SIGTERM while a command runs, raised where the command is, so that its temporary files are removed on the way
    out as on Ctrl-C. A BaseException: `except Exception` never swallows it."""


def _on_sigterm(signum, frame):
    raise Terminated()


# A path the machine will not let the command read or write: the user's to fix, said in one line like bad input.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC,
                      errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


def path_error(e: OSError) -> str:
    """`path: reason` for an OSError; a temporary name of lightfmp's (.name.xxxx.tmp) is told as its folder."""
    path = Path(e.filename)
    temp = next((q for q in reversed([path, *path.parents]) if q.name.startswith(".") and q.name.endswith(".tmp")),
                None)  # the outermost: a file written inside a temporary folder
    if temp is not None:
        return f"{temp.parent}: {e.strerror}: cannot write there"
    return f"{path}: {e.strerror}"


def out_of_memory(e: BaseException) -> str | None:
    """What an allocation that failed asked for (`MemoryError`, torch's CPU allocator or CUDA out of memory), in
    words; None for any other error."""
    text = str(e)
    if isinstance(e, MemoryError):
        return "an allocation failed"
    if "can't allocate memory" in text or "out of memory" in text.lower():
        asked = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [KMGTP]iB)", text)
        if asked is None:
            return "an allocation failed"
        size = asked.group(1)
        return f"an allocation of {int(size) / 2**30:,.1f} GiB failed" if size.isdigit() else \
            f"an allocation of {size} failed"
    return None


# The entry point's handlers for a stop while the commands load (lightfmp.cli.entry), by signal, with the handlers
# they replaced: they stay in place until a command starts (typer builds the commands and reads the arguments in
# between, and a stop there is the same one line), and the command gives the signals back to Python's handling.
_LOADING: dict = {}


def hold_loading_handlers(replaced: dict) -> None:
    _LOADING.update(replaced)


def _give_back_loading_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        for s, handler in _LOADING.items():
            signal.signal(s, handler)
    _LOADING.clear()


def friendly(func):
    """Bad input ends in one line on stderr and exit code 2, never a traceback; Ctrl-C ends in one line saying
    how to resume (rerunning the same command resumes from the per-epoch checkpoints in <out>.ckpt/) and exit
    code 130; SIGTERM alike, exit code 143 (a command that handles it itself, `serve` or a torchrun rank, sets its
    own handler while it runs)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _give_back_loading_handlers()
        checkpoint.reset_hint()
        _FROM_CONFIG.set(None)
        who = lambda: f"rank {distributed.rank()}: " if distributed.world() > 1 else ""  # noqa: E731
        # only in the main thread, and only over the default (a caller that ignores SIGTERM or handles it keeps that)
        main = threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
        try:
            return func(*args, **kwargs)
        except LightFMPError as e:
            fail(who() + with_config_origin(str(e)))
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS or not e.filename:
                raise
            fail(who() + path_error(e))
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and str(e).startswith("Symlink loop from"):  # Path.resolve (Python 3.11)
                fail(who() + f"{str(e)[len('Symlink loop from '):]}: a loop of symbolic links")
            asked = out_of_memory(e)
            if asked is None:
                raise
            fail(who() + f"out of memory: {asked}; the sizes given need more than this machine has "
                         f"(--embed-dim, --hidden, --batch-size, the vocabularies: --vocab-cap, --hash-buckets)")
        except (KeyboardInterrupt, Terminated) as e:
            word, code = ("interrupted", INTERRUPTED) if isinstance(e, KeyboardInterrupt) \
                else ("terminated", TERMINATED)
            err.print(f"{word}: {who()}{checkpoint.resume_hint()}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    wrapper.__signature__ = inspect.signature(func)
    return wrapper


def ranked(func):
    """Training commands under torchrun: a rank that loses the others (one died, hung or was stopped) prints one
    line saying how to resume and exits 1, so torchrun reports the failure; the process group is torn down at
    the end either way. Outside torchrun this changes nothing."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, LightFMPError):
            raise
        except BaseException as e:
            if distributed.world() > 1 and distributed.is_comm_error(e):
                with distributed.deaf_to_sigterm():  # torchrun stops the ranks left: this line first
                    err.print(distributed.failure_message(e), markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            raise
        finally:
            distributed.destroy()
    wrapper.__signature__ = inspect.signature(func)
    return wrapper


def speaks(quiet: bool) -> bool:
    """Whether this process prints results: not --quiet, and rank 0 under torchrun."""
    return not quiet and distributed.is_main()


def resolve_config(kwargs: dict) -> RunConfig:
    """The RunConfig of a command given --out RUN, --config FILE and the config flags (flags win over the file)."""
    if kwargs["out"] is None:
        raise LightFMPError("missing --out RUN (the run directory to create)")
    flags, config = config_flags(kwargs), str(kwargs["config"]) if kwargs["config"] else None
    note_config_origin(flags, config)
    return resolve(flags, config)


def note_config_origin(flags: dict, config: str | None) -> None:
    """Remember which options the --config file set, for errors that name one (`friendly` says where it came
    from)."""
    if config:
        given = {k for k, v in flags.items() if v is not None}
        _FROM_CONFIG.set((config, frozenset(config_keys(load_yaml(config))) - given))


_FROM_CONFIG: contextvars.ContextVar = contextvars.ContextVar("from_config", default=None)


def with_config_origin(message: str) -> str:
    """`message`, saying which of the options it names the --config file set (they read as flags in it)."""
    origin = _FROM_CONFIG.get()
    if origin is None or message.startswith(f"{origin[0]}:"):
        return message
    named = [flag(k) for k in sorted(origin[1]) if re.search(rf"(?<![\w-]){re.escape(flag(k))}(?![\w-])", message)]
    return f"{message} ({', '.join(named)} from {origin[0]})" if named else message
