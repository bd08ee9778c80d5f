#ifndef DATE_H
#define DATE_H

/* The proleptic Gregorian calendar. month is 1-12. */
int is_leap_year(int year);
int days_in_month(int year, int month);
/* 0 = Sunday ... 6 = Saturday. */
int day_of_week(int year, int month, int day);
#endif
