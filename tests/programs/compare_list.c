/* img-bisect: a circular doubly linked list with a sentinel, checkpointed 8 times (the test
 * saves one at each checkpoint() call); after the 5th the last node's link goes wrong:
 * `head.prev->next != &head` is true from the 6th on. */
#include <stdlib.h>
#include "checkpoint.h"

struct node {
    struct node *next, *prev;
    int value;
};

struct node head = {&head, &head, 0};
int round_no;

static void push(int value) {
    struct node *n = malloc(sizeof *n);
    n->value = value;
    n->next = head.next;
    n->prev = &head;
    head.next->prev = n;
    head.next = n;
}

int main(void) {
    for (round_no = 1; round_no <= 8; round_no++) {
        push(round_no);
        if (round_no == 6)
            head.prev->next = head.prev;  /* the bug: the last node now points at itself */
        checkpoint();
    }
    printf("round %d\n", round_no);
    return 0;
}
