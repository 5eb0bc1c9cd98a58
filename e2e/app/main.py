import colorama
import six

print("hello from the e2e app", colorama, six)
