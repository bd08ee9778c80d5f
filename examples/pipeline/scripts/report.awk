# build/summary.csv -> a plain-text report for people.
BEGIN {
    FS = ","
    print "Temperatures, March 2024 (degrees Celsius)"
    print ""
    printf "%-10s %5s %6s %8s %-10s %8s %s\n", "station", "days", "mean", "coldest", "on", "warmest", "on"
}
NR == 1 { next }
{
    printf "%-10s %5d %6.1f %8.1f %-10s %8.1f %s\n", $1, $2, $3, $4, $5, $6, $7
    if (best == "" || $3 + 0 > best_mean) { best = $1; best_mean = $3 + 0 }
}
END { print ""; printf "Mildest on average: %s (%.1f).\n", best, best_mean }
