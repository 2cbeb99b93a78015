
import os, socket, sys, threading

def address(text):
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return socket.AF_UNIX, rest
    host, _, port = rest.rpartition(":")
    if kind == "tcp" and host and port.isdigit():
        return socket.AF_INET, (host, int(port))
    sys.exit("relay: %r is not tcp:HOST:PORT or unix:PATH" % text)

def listener(family, where):
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_UNIX:
        if os.path.exists(where):
            os.unlink(where)  # left by the container's previous run
        os.makedirs(os.path.dirname(where) or ".", exist_ok=True)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(where)
    if family == socket.AF_UNIX:
        os.chmod(where, 0o600)
    sock.listen(128)
    return sock

def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def carry(client, family, where):
    try:
        upstream = socket.socket(family, socket.SOCK_STREAM)
        upstream.settimeout(10)
        upstream.connect(where)
        upstream.settimeout(None)
    except OSError:
        client.close()  # the target is not up yet: the caller sees a closed connection
        return
    back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
    back.start()
    pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()

def serve(listen_at, target):
    server = listener(*address(listen_at))
    family, where = address(target)
    while True:
        client, _ = server.accept()
        threading.Thread(target=carry, args=(client, family, where), daemon=True).start()

args = sys.argv[1:]
program = args[args.index("--") + 1:] if "--" in args else []
if program:
    if os.fork() == 0:
        os.setsid()
        serve(args[0], args[1])
    os.execvp(program[0], program)
serve(args[0], args[1])
