"""Reads a Cobble statistics export as a stats site would: tables.xml and
the gzip'd user, team and host lists, with Python's own XML parser (which
refuses anything that is not well-formed XML). Prints what it found, one
fact a line: counts, the sum of users' credit, and every user name.

usage: stats_check.py DIR
"""

import gzip
import sys
import xml.etree.ElementTree as ET


def main():
    folder = sys.argv[1]
    tables = ET.parse(f"{folder}/tables.xml").getroot()
    for field in ("nusers_total", "nteams_total", "nhosts_total", "total_credit"):
        print(f"tables {field} {tables.findtext(field)}")
    for kind in ("user", "team", "host"):
        with gzip.open(f"{folder}/{kind}.gz") as stream:
            root = ET.parse(stream).getroot()
        records = root.findall(kind)
        print(f"{kind}s {len(records)}")
        if kind == "user":
            credit = sum(float(r.findtext("total_credit")) for r in records)
            print(f"user_credit {credit:.6f}")
            for record in records:
                print(f"user_name {record.findtext('name')}")


if __name__ == "__main__":
    main()
