"""Pairs the rows of two builds' benchmark outputs (scripts/device-compare) and prints, per
row, the best of each build's runs for every number in it and new / old of the row's last
number (its ratio to the ceiling, in kvbm's tables). A row whose ceiling is itself a kvbm
path (its text names an agent, as bench gpu's staged row does) is compared by its own GB/s
instead: that ceiling moves with the code under comparison."""
import re
import sys

NUM = re.compile(r"-?\d+(?:\.\d+)?")


def column_value(line, at):
    """The number whose text starts nearest the header's column at `at`, if any."""
    for m in NUM.finditer(line):
        if abs(m.start() - at) <= 3:
            return float(m.group())
    return None


def header_column(line):
    """(position, lower_is_better, end of the label columns, position of our own GB/s or
    None) of the column a table row is compared by: our own p50 in a latency table, our
    own GB/s where a table sets us beside ucx_perftest, else the ratio to the ceiling,
    else GB/s."""
    found = [line.find(w) for w in ("GB/s", "p50 us", "ratio") if w in line]
    if not found:
        return None
    labels = min(found)  # the row's label columns end where the first value column starts
    gbps = line.index("GB/s") if "GB/s" in line else None
    if "p50 us" in line:
        return line.index("p50 us"), True, labels, gbps
    if "perftest" in line and gbps is not None:
        return gbps, False, labels, gbps
    m = re.search(r"\bratio\b", line) or re.search(r"GB/s", line)
    return m.start(), False, labels, gbps


def rows(path):
    """Row key (its text, numbers masked) -> (value, lower_is_better) for every table row."""
    out = {}
    column = None
    for line in open(path, errors="replace"):
        if not NUM.search(line.replace("GB/s", "").replace("p50", "")):
            column = header_column(line) or column
            continue
        if column is None or len(NUM.findall(line)) < 2:
            continue  # before the first table, or not a row
        at = column[0]
        if column[3] is not None and re.search(r"\bagent\b", line[column[2]:]):
            at = column[3]  # the ceiling is a kvbm path: our own GB/s
        value = column_value(line, at)
        if value is None:
            continue
        key = re.sub(r"\s+", " ", line[: column[2]]).strip()
        while key in out:
            key += "'"
        out[key] = (value, column[1])
    return out


def best(a, b):
    if a is None or b is None:
        return a or b
    lower = a[1]
    return min(a, b) if lower else max(a, b)


def main():
    o1, o2, n1, n2 = (rows(p) for p in sys.argv[1:5])
    for key in o1:
        old = best(o1.get(key), o2.get(key))
        new = best(n1.get(key), n2.get(key))
        if new is None:
            print(f"{key[:70]:70} old {old[0]:8.3f}  new: row missing")
            continue
        # Above 1: the new build is better (faster, or lower latency).
        if old[1]:
            ratio = old[0] / new[0] if new[0] else float("nan")
        else:
            ratio = new[0] / old[0] if old[0] else float("nan")
        flag = "" if ratio >= 0.95 else "  <-- below 0.95"
        print(f"{key[:70]:70} old {old[0]:8.3f}  new {new[0]:8.3f}  new/old {ratio:5.2f}{flag}")


main()
