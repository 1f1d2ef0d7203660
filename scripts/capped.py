"""Run a command under a memory watchdog: kill its process group when the tree's RSS passes the cap.

usage: capped.py CAP_GB CMD...   (prints the peak tree RSS it saw on exit)
"""
import os, signal, subprocess, sys, time

cap = float(sys.argv[1]) * 1024 ** 3
KEY = os.environ.get("CAP_ON", "VmRSS") + ":"
proc = subprocess.Popen(sys.argv[2:], start_new_session=True)

def tree_rss(root):
    pids, total = [root], 0
    try:
        kids = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                    kids.setdefault(ppid, []).append(int(p))
                except OSError:
                    pass
        stack = [root]
        while stack:
            pid = stack.pop()
            stack += kids.get(pid, [])
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith(KEY):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
    except OSError:
        pass
    return total

peak = 0
killed = False
while proc.poll() is None:
    rss = tree_rss(proc.pid)
    peak = max(peak, rss)
    if rss > cap:
        os.killpg(proc.pid, signal.SIGKILL)
        killed = True
        break
    time.sleep(0.05)
rc = proc.wait()
print(f"[capped] rc={rc} peak_tree_rss={peak / 1024**3:.2f} GiB" + (f" KILLED at cap {cap / 1024**3:.1f} GiB" if killed else ""), file=sys.stderr, flush=True)
sys.exit(137 if killed else rc)
