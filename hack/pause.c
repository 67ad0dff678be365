/* The pod sandbox's process (containerd's sandbox_image on the test node): it holds the
 * pod's namespaces and does nothing until it is told to stop. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int signum) { (void)signum; _exit(0); }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;)
        pause();
}
