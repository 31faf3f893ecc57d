"""A roll call before `jax.distributed.initialize`: JAX 0.10 aborts the process in C++ when one
never arrives, so the processes first meet over a plain TCP socket on the coordinator's port,
where a missing one can be named in a sentence. Process 0 listens until all have said their id,
answers "go", closes, and JAX's coordination service then binds the same port.
"""

import socket
import time

from dul_jax.errors import UserError

GO = b'go\n'
TIMEOUT_KEY = '--config.distributed.initialization_timeout_s'


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = address.rpartition(':')
    if not sep or not port.isdigit():
        raise UserError(f'distributed.coordinator must be HOST:PORT, got "{address}".')
    return host.strip('[]'), int(port)


def roll_call(address: str, num_processes: int, process_id: int, timeout_s: float) -> None:
    """Return once all `num_processes` processes have reached this call; UserError (on every
    process that is there) naming who is missing once `timeout_s` has passed."""
    if num_processes < 2:
        return
    host, port = split_address(address)
    deadline = time.monotonic() + timeout_s
    if process_id == 0:
        _gather(port, num_processes, deadline, timeout_s)
    else:
        _report(host, port, process_id, deadline, timeout_s)


def _listener(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        return socket.create_server(('', port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(('', port))


def _gather(port, num_processes, deadline, timeout_s) -> None:
    arrived = {}
    with _listener(port) as server:
        try:
            while len(arrived) < num_processes - 1:
                server.settimeout(max(deadline - time.monotonic(), 0.001))
                conn, _ = server.accept()
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                said = conn.recv(32).decode(errors='replace').strip()
                if not (said.isdigit() and 0 < int(said) < num_processes):
                    conn.close()   # not one of ours (a port scanner, a stale client): not counted
                elif int(said) in arrived:
                    for other in (conn, *arrived.values()):
                        other.close()
                    raise UserError(f'two processes were started as process {said} of '
                                    f'{num_processes}; give each its own '
                                    '--config.distributed.process_id.')
                else:
                    arrived[int(said)] = conn
        except TimeoutError:
            for conn in arrived.values():
                conn.close()   # the others see the call end without "go"
            missing = sorted(set(range(1, num_processes)) - set(arrived))
            raise UserError(
                f'process(es) {", ".join(map(str, missing))} of {num_processes} did not arrive '
                f'within {timeout_s:g} s; start them with the same coordinator and process '
                f'count, or raise {TIMEOUT_KEY} if they start late.') from None
        for conn in arrived.values():
            conn.sendall(GO)
        for conn in arrived.values():   # they close first, so this port is free for JAX at once
            conn.settimeout(10)
            try:
                conn.recv(1)
            except OSError:
                pass
            conn.close()


def _report(host, port, process_id, deadline, timeout_s) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(f'process 0 (the coordinator, {host}:{port}) did not arrive within '
                            f'{timeout_s:g} s; start it, check distributed.coordinator, or raise '
                            f'{TIMEOUT_KEY} if it starts late.')
        try:
            conn = socket.create_connection((host, port), timeout=min(left, 5.0))
            break
        except OSError:   # not listening yet
            time.sleep(min(0.2, max(left, 0.0)))
    with conn:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        conn.sendall(f'{process_id}\n'.encode())
        answer = b''
        try:
            while len(answer) < len(GO) and (part := conn.recv(len(GO) - len(answer))):
                answer += part
        except TimeoutError:
            pass
    if answer != GO:
        raise UserError(f'process 0 ({host}:{port}) ended the roll call without a start (its '
                        f'log says why: a process missing after {timeout_s:g} s, or one id given '
                        f'twice); raise {TIMEOUT_KEY} if some start late.')
